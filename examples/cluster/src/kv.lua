-- The cluster's key-value process. Every node runs one. The one that registers the
-- CONSISTENT name "kv" first serves every node; the others monitor it and try to take the
-- name when it exits or its node goes down (the monitor fires with "node disconnected").
-- Requests arrive on topics get/put/delete with a payload {key, value?, ref}; the answer
-- goes back to the sender, wherever it runs, on "kv.reply" as {ref, ok, value?, error?, node}.
local node = system.node.id()

local function serve(inbox, events)
    logger:info("kv: serving", { node = node })
    local store, count = {}, 0
    while true do
        local r = channel.select { inbox:case_receive(), events:case_receive() }
        if r.channel == events then
            if r.value.kind == process.event.CANCEL then
                logger:info("kv stopping", { keys = count })
                return count
            end
        else
            local msg = r.value
            local req = msg:payload():data() or {}
            local reply = { ref = req.ref, ok = true, node = node }
            local topic = msg:topic()
            if type(req.key) ~= "string" then
                reply.ok, reply.error = false, "key must be a string"
            elseif topic == "get" then
                reply.value = store[req.key]
            elseif topic == "put" then
                if store[req.key] == nil then count = count + 1 end
                store[req.key] = req.value
                reply.value = true
            elseif topic == "delete" then
                if store[req.key] ~= nil then count = count - 1 end
                reply.value, store[req.key] = store[req.key], nil
            else
                reply.ok, reply.error = false, "unknown operation " .. topic
            end
            process.send(msg:from(), "kv.reply", reply)
        end
    end
end

local function main()
    local inbox, events = process.inbox(), process.events()
    while true do
        local ok = process.registry.register("kv", nil, process.registry.CONSISTENT)
        if ok then return serve(inbox, events) end
        local owner = process.registry.lookup("kv")
        if owner and process.monitor(owner) then
            logger:info("kv: standing by", { node = node, owner = owner })
            while true do
                local ev = events:receive()
                if ev.kind == process.event.CANCEL then return 0 end
                if ev.kind == process.event.EXIT and ev.from == owner then break end
            end
        else
            -- the owner exited between register and lookup: try again soon
            local r = channel.select { events:case_receive(), time.after("20ms"):case_receive() }
            if r.channel == events and r.value.kind == process.event.CANCEL then return 0 end
        end
    end
end

return { main = main }
