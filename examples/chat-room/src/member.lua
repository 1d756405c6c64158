-- A member: joins the room, says what the demo tells it to, and keeps a transcript of
-- every line the room broadcasts. After each of its own lines comes back, it acks the
-- demo; when told to leave, it sends its transcript to the demo and ends.
local function main(room, demo, name)
    local chat, cmd, bye = process.listen("chat"), process.listen("cmd"), process.listen("bye")
    local transcript, waiting_for = {}, nil
    process.send(room, "join", name)
    waiting_for = "* " .. name .. " joined"
    while true do
        local r = channel.select { chat:case_receive(), cmd:case_receive() }
        if r.channel == chat then
            table.insert(transcript, r.value)
            if waiting_for and r.value:sub(1, #waiting_for) == waiting_for then
                waiting_for = nil
                process.send(demo, "ack", name)
            end
        elseif r.value.say then
            waiting_for = name .. ": " .. r.value.say
            process.send(room, "say", r.value.say)
        elseif r.value.leave then
            process.send(room, "leave")
            bye:receive()
            process.send(demo, "transcript", { name = name, lines = transcript })
            return #transcript
        end
    end
end

return { main = main }
