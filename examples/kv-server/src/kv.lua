-- A named key-value process. Requests arrive on topics get/put/delete with a payload
-- {key, value?, ref}; the answer goes back to the sender on topic "kv.reply" as
-- {ref, ok, value?, error?}.
local function main()
    process.registry.register("kv")
    logger:info("kv ready")
    local store, count = {}, 0
    local inbox, events = process.inbox(), process.events()
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
            local reply = { ref = req.ref, ok = true }
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
                reply.ok, reply.error = false, "unknown request " .. topic
            end
            process.send(msg:from(), "kv.reply", reply)
        end
    end
end

return { main = main }
