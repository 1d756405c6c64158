local function main()
    process.registry.register("pong")
    logger:info("pong ready")
    local inbox, events = process.inbox(), process.events()
    local served = 0
    while true do
        local r = channel.select { inbox:case_receive(), events:case_receive() }
        if r.channel == events then
            if r.value.kind == process.event.CANCEL then
                logger:info("pong stopping", { served = served })
                return served
            end
        elseif r.value:topic() == "ping" then
            served = served + 1
            process.send(r.value:from(), "pong", r.value:payload():data())
        end
    end
end

return { main = main }
