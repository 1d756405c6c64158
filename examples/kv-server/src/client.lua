local kv = require("kvclient")

local function show(label, value, err)
    if err then
        io.print(label .. " -> error: " .. tostring(err))
    else
        io.print(label .. " -> " .. tostring(value))
    end
end

local function main(op, key, value)
    if not kv.wait_for_server("5s") then return nil, "the kv server is not running" end
    op = op or "demo"
    if op == "demo" then
        show("put color blue", kv.call("put", "color", "blue"))
        show("put size 42", kv.call("put", "size", 42))
        show("get color", kv.call("get", "color"))
        show("get size", kv.call("get", "size"))
        show("delete color", kv.call("delete", "color"))
        show("get color", kv.call("get", "color"))
        return 0
    end
    local result, err = kv.call(op, key, value)
    show(op .. " " .. tostring(key), result, err)
    if err then return 1 end
    return 0
end

return { main = main }
