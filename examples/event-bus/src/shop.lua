-- Starts the two listeners, publishes events, then prints what each one saw.
local function main()
    local me = process.pid()
    local ready = process.listen("ready")
    local audit = process.spawn("app:audit", "app:processes", me)
    local mailer = process.spawn("app:mailer", "app:processes", me)
    ready:receive(); ready:receive()

    assert(events.send("app.users", "created", "/users/7", { email = "ada@example.com" }))
    assert(events.send("app.orders", "created", "/orders/1", { id = 1, email = "ada@example.com" }))
    assert(events.send("app.orders", "paid", "/orders/1", { id = 1 }))
    assert(events.send("app.orders", "created", "/orders/2", { id = 2, email = "bob@example.com" }))
    assert(events.send("billing.invoices", "created", "/invoices/1"))

    process.send(audit, "stop")
    process.send(mailer, "stop")
    local reports = process.listen("report")
    local by = {}
    for _ = 1, 2 do
        local r = reports:receive()
        by[r.who] = r.lines
    end
    for _, who in ipairs({ "audit", "mailer" }) do
        io.print(who .. " saw " .. #by[who] .. ":")
        for _, line in ipairs(by[who]) do io.print("  " .. line) end
    end
    return 0
end

return { main = main }
