-- Stage 1: CSV text -> {item, qty, price}; malformed lines are passed on as rejects.
local function main(next_stage)
    local inbox = process.inbox()
    while true do
        local msg = inbox:receive()
        if msg:topic() == "eof" then
            process.send(next_stage, "eof")
            return "parse done"
        end
        local line = msg:payload():data()
        local item, qty, price = line.text:match("^%s*([%w_]+)%s*,%s*(-?%d+)%s*,%s*(-?[%d.]+)%s*$")
        if item then
            process.send(next_stage, "record", { n = line.n, item = item, qty = math.tointeger(tonumber(qty)), price = tonumber(price) })
        else
            process.send(next_stage, "reject", string.format("line %d: cannot parse %q", line.n, line.text))
        end
    end
end

return { main = main }
