-- Builds the pipeline back to front (each stage learns the PID of the next), streams the
-- input lines into the first stage, and prints the aggregate the last stage sends back.
local SAMPLE = {
    "apple,3,0.5", "pear,2,0.75", "apple,10,0.45", "fig,1,2.0",
    "not a record", "pear,4,0.7", "fig,-2,1.0", "apple,1,0.5",
}

local function main(...)
    local lines = { ... }
    if #lines == 0 then lines = SAMPLE end
    local result = process.listen("result")
    local aggregate = process.spawn_linked("app:aggregate", "app:processes", process.pid())
    local transform = process.spawn_linked("app:transform", "app:processes", aggregate)
    local parse = process.spawn_linked("app:parse", "app:processes", transform)
    for i, line in ipairs(lines) do
        process.send(parse, "line", { n = i, text = line })
    end
    process.send(parse, "eof")
    local r = channel.select { result:case_receive(), time.after("10s"):case_receive() }
    if r.channel ~= result then return nil, "the pipeline did not finish in time" end
    local summary = r.value
    for _, row in ipairs(summary.items) do
        io.print(string.format("%-8s qty %4d  total %8.2f", row.item, row.qty, row.total))
    end
    for _, bad in ipairs(summary.rejected) do io.print("rejected: " .. bad) end
    io.print(string.format("%d records, %d rejected, grand total %.2f", summary.records, #summary.rejected, summary.total))
    return 0
end

return { main = main }
