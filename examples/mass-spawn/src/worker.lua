-- A long-lived worker: a tick to the collector every second until cancelled.
local function main(collector, index)
    local tick = time.ticker("1s")
    local events = process.events()
    local sent = 0
    while true do
        local r = channel.select { tick:channel():case_receive(), events:case_receive() }
        if r.channel == events then
            if r.value.kind == process.event.CANCEL then return sent end
        else
            sent = sent + 1
            process.send(collector, "tick", index)
        end
    end
end

return { main = main }
