-- Starts three tenant workers under their own actors (two of acme, one of globex) with the
-- tenant scope, lets each try to reach the others, the gateway and the vault, and prints
-- what the policies allowed and denied.
local function main()
    local scope = assert(security.named_scope("app:tenant"))
    local tenants = {
        { name = "acme-1", org = "acme" }, { name = "acme-2", org = "acme" }, { name = "globex-1", org = "globex" },
    }
    local events = process.events()
    for _, t in ipairs(tenants) do
        local actor = security.new_actor("tenant:" .. t.name, { org = t.org })
        t.pid = assert(process.with_actor(actor):with_scope(scope):spawn_monitored("app:tenant_worker", "app:sandbox"))
    end
    local peers = {}
    for i, t in ipairs(tenants) do peers[i] = { name = t.name, pid = t.pid } end
    for _, t in ipairs(tenants) do process.send(t.pid, "go", { peers = peers }) end
    -- Every tenant messages the gateway in the middle of its tries (the rest follow in
    -- the same step): once the gateway has all three, stop them and collect the reports.
    local counts = process.listen("count")
    local deadline = time.after("10s")
    while true do
        process.send("gateway", "count")
        local r = channel.select { counts:case_receive(), deadline:case_receive() }
        if r.channel == deadline then return nil, "the tenants did not reach the gateway in time" end
        if r.value >= #tenants then break end
        time.sleep("5ms")
    end
    for _, t in ipairs(tenants) do process.cancel(t.pid, "demo over") end
    local reports = {}
    for _ = 1, #tenants do
        local ev = events:receive()
        reports[ev.from] = ev.result.value or tostring(ev.result.error)
    end
    for _, t in ipairs(tenants) do io.print(reports[t.pid]) end
    local _, err = process.spawn("app:greedy_worker", "app:sandbox")
    io.print("spawn greedy_worker (needs json) on app:sandbox: " .. tostring(err))
    for _, name in ipairs { "gateway", "vault" } do
        process.send(name, "count")
        io.print(name .. " received " .. counts:receive() .. " messages")
    end
    return 0
end

return { main = main }
