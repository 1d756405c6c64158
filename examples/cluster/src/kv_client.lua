-- Request/response over topics with a timeout: send a request carrying a reference, wait
-- for the reply with that reference on "kv.reply", give up after `timeout`. The reply
-- says which node served it.
local M = {}
local next_ref = 0

function M.wait_for_server(within)
    local deadline = time.now():add(time.parse_duration(within or "5s"))
    while not process.registry.lookup("kv") do
        if time.now():after(deadline) then return false end
        time.sleep("5ms")
    end
    return true
end

function M.call(op, key, value, timeout)
    next_ref = next_ref + 1
    local ref = next_ref
    local replies = process.listen("kv.reply")
    local ok, err = process.send("kv", op, { key = key, value = value, ref = ref })
    if not ok then return nil, err end
    local deadline = time.after(timeout or "1s")
    while true do
        local r = channel.select { replies:case_receive(), deadline:case_receive() }
        if r.channel == deadline then
            return nil, errors.new { message = "kv " .. op .. " timed out", kind = errors.TIMEOUT }
        end
        if r.value.ref == ref then
            if not r.value.ok then return nil, r.value.error end
            return r.value.value, nil, r.value.node
        end
    end
end

return M
