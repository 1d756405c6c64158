local function main(name)
    name = name or "world"
    io.print("hello, " .. name .. "! I am process " .. process.pid())
    io.print("args: " .. table.concat(io.args(), " "))
    return 0
end

return { main = main }
