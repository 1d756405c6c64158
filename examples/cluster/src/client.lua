local kv = require("kvclient")

local function main(op, key, value)
    if op == "members" then
        for _, m in ipairs(system.cluster.members()) do
            io.print(m.id .. (m.is_local and " (this node)" or ""))
        end
        return 0
    end
    if not kv.wait_for_server("5s") then
        io.print("error: no kv service is reachable")
        return 1
    end
    local result, err, served_by = kv.call(op or "get", key, value, "2s")
    if err then
        io.print((op or "get") .. " " .. tostring(key) .. " -> error: " .. tostring(err))
        return 1
    end
    io.print((op or "get") .. " " .. tostring(key) .. " -> " .. tostring(result) .. " (served by " .. tostring(served_by) .. ")")
    return 0
end

return { main = main }
