-- Drives a conversation: each step waits for the member's ack (its own line came back
-- from the room), so the transcripts are the same on every run.
local function main()
    local acks, transcripts = process.listen("ack"), process.listen("transcript")
    local room = process.spawn_linked("app:room", "app:processes", "#lobby")
    local me = process.pid()
    local function wait_ack()
        local r = channel.select { acks:case_receive(), time.after("5s"):case_receive() }
        if r.channel ~= acks then error("a member did not answer in time") end
    end
    local members = {}
    for _, name in ipairs { "alice", "bob", "carol" } do
        members[name] = process.spawn("app:member", "app:processes", room, me, name)
        wait_ack()
    end
    local function say(name, text)
        process.send(members[name], "cmd", { say = text })
        wait_ack()
    end
    local function leave(name)
        process.send(members[name], "cmd", { leave = true })
        local t = transcripts:receive()
        io.print("--- what " .. t.name .. " saw")
        for _, line in ipairs(t.lines) do io.print("  " .. line) end
    end
    say("alice", "hi all")
    say("bob", "hello alice")
    leave("carol")
    say("alice", "bye carol")
    leave("bob")
    leave("alice")
    process.send(room, "close")
    return 0
end

return { main = main }
