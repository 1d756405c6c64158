-- Wait until a name is registered (the other service starts concurrently).
local function find(name, within)
    local deadline = time.now():add(time.parse_duration(within))
    while true do
        local pid = process.registry.lookup(name)
        if pid then return pid end
        if time.now():after(deadline) then return nil end
        time.sleep("10ms")
    end
end

local function main(period)
    local pong = find("pong", "5s")
    if not pong then return nil, "pong never registered" end
    logger:info("ping found pong", { pong = pong })
    local replies, events = process.listen("pong"), process.events()
    local tick = time.ticker(period or "200ms")
    local round = 0
    while true do
        local r = channel.select { tick:channel():case_receive(), events:case_receive() }
        if r.channel == events and r.value.kind == process.event.CANCEL then
            logger:info("ping stopping", { rounds = round })
            return round
        elseif r.channel ~= events then
            round = round + 1
            local sent = time.now()
            process.send("pong", "ping", round)
            local got = channel.select { replies:case_receive(), time.after("1s"):case_receive() }
            if got.channel ~= replies then
                logger:warn("pong did not answer in time", { round = round })
            else
                local rtt = time.now():sub(sent)
                logger:info("ping-pong round", { round = got.value, rtt = tostring(rtt) })
            end
        end
    end
end

return { main = main }
