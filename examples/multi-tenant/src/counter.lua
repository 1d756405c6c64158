-- A system service: registers its name, counts messages, answers "count" requests.
local function main(name)
    process.registry.register(name)
    local inbox, events = process.inbox(), process.events()
    local n = 0
    while true do
        local r = channel.select { inbox:case_receive(), events:case_receive() }
        if r.channel == events then
            if r.value.kind == process.event.CANCEL then return n end
        elseif r.value:topic() == "count" then
            process.send(r.value:from(), "count", n)
        else
            n = n + 1
        end
    end
end

return { main = main }
