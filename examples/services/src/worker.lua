-- Reads keys through the cache; after `crash_after` reads it hits a bad record and crashes.
local KEYS = { "color", "size", "shape", "weight" }

local function main(crash_after)
    local values, events = process.listen("value"), process.events()
    local tick = time.ticker("20ms")
    local reads = 0
    while true do
        local r = channel.select { tick:channel():case_receive(), events:case_receive() }
        if r.channel == events then
            if r.value.kind == process.event.CANCEL then return reads end
        else
            reads = reads + 1
            local key = KEYS[(reads - 1) % #KEYS + 1]
            process.send("cache", "get", key)
            local got = channel.select { values:case_receive(), time.after("1s"):case_receive() }
            if got.channel ~= values then error("cache did not answer", 0) end
            logger:info("read", { key = key, value = tostring(got.value.value) })
            if reads >= crash_after then
                error("bad record after " .. reads .. " reads", 0)
            end
        end
    end
end

return { main = main }
