-- The room: members join and leave; whatever one says is broadcast to everyone present.
-- It monitors its members, so a member that dies leaves the room too.
local function main(name)
    local inbox, events = process.inbox(), process.events()
    local members, order = {}, {}

    local function broadcast(line)
        for _, pid in ipairs(order) do process.send(pid, "chat", line) end
    end
    local function leave(pid, why)
        local who = members[pid]
        if not who then return end
        members[pid] = nil
        for i, p in ipairs(order) do if p == pid then table.remove(order, i) break end end
        process.unmonitor(pid)
        broadcast("* " .. who .. " " .. why)
    end

    while true do
        local r = channel.select { inbox:case_receive(), events:case_receive() }
        if r.channel == events then
            local ev = r.value
            if ev.kind == process.event.CANCEL then return #order end
            if ev.kind == process.event.EXIT then leave(ev.from, "disconnected") end
        else
            local msg, from = r.value, r.value:from()
            local payload = msg:payload()
            local topic, data = msg:topic(), payload and payload:data()
            if topic == "join" and not members[from] then
                members[from] = data
                table.insert(order, from)
                process.monitor(from)
                broadcast("* " .. data .. " joined " .. name)
            elseif topic == "say" and members[from] then
                broadcast(members[from] .. ": " .. data)
            elseif topic == "leave" then
                leave(from, "left")
                process.send(from, "bye", true)
            elseif topic == "close" then
                return #order
            end
        end
    end
end

return { main = main }
