-- Members by their socket's PID; every line said goes to all of them.
local function main()
    process.registry.register("chat.room")
    print("chat room open")
    local members = {}
    local function broadcast(text)
        for pid in pairs(members) do process.send(pid, "chat.line", text) end
    end
    local inbox, events = process.inbox(), process.events()
    while true do
        local r = channel.select { inbox:case_receive(), events:case_receive() }
        if r.channel == events then
            if r.value.kind == process.event.CANCEL then return end
        else
            local msg = r.value
            local topic, data = msg:topic(), msg:payload() and msg:payload():data()
            if topic == "ws.join" then
                members[data.client_pid] = data.metadata.user
                broadcast("* " .. data.metadata.user .. " joined")
            elseif topic == "chat.say" then
                local who = members[msg:from()]
                if who then broadcast(who .. ": " .. tostring(data)) end
            elseif topic == "ws.leave" then
                local who = members[data.client_pid]
                members[data.client_pid] = nil
                if who then broadcast("* " .. who .. " left") end
            end
        end
    end
end

return { main = main }
