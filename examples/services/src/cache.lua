-- A read-through cache in front of "db": hits are answered at once, misses go to the db.
local function main()
    process.registry.register("cache")
    logger:info("cache ready")
    local cached, hits, misses = {}, 0, 0
    local inbox, events, rows = process.inbox(), process.events(), process.listen("row")
    while true do
        local r = channel.select { inbox:case_receive(), events:case_receive() }
        if r.channel == events then
            if r.value.kind == process.event.CANCEL then
                logger:info("cache stopping", { hits = hits, misses = misses })
                return "stopped"
            end
        elseif r.value:topic() == "get" then
            local key = r.value:payload():data()
            if cached[key] == nil then
                misses = misses + 1
                process.send("db", "query", key)
                local got = channel.select { rows:case_receive(), time.after("1s"):case_receive() }
                if got.channel == rows then cached[key] = got.value.value or false end
            else
                hits = hits + 1
            end
            process.send(r.value:from(), "value", { key = key, value = cached[key] or nil })
        end
    end
end

return { main = main }
