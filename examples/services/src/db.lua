-- A tiny database: a table of rows, answering "query" requests with "row" replies.
local function main(rows)
    process.registry.register("db")
    local count = 0
    for _ in pairs(rows) do count = count + 1 end
    logger:info("db open", { rows = count })
    local inbox, events = process.inbox(), process.events()
    while true do
        local r = channel.select { inbox:case_receive(), events:case_receive() }
        if r.channel == events then
            if r.value.kind == process.event.CANCEL then
                logger:info("db closing")
                return "closed"
            end
        elseif r.value:topic() == "query" then
            local key = r.value:payload():data()
            process.send(r.value:from(), "row", { key = key, value = rows[key] })
        end
    end
end

return { main = main }
