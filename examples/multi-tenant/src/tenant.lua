-- A tenant's worker: waits for the list of peers, tries what it was told to try, and
-- returns what was allowed and what was denied (with the runtime's error message).
local function main()
    local me = security.actor():id()
    local go = process.listen("go")
    local events = process.events()
    local plan = go:receive()
    local out = {}
    local function try(label, ok, err)
        out[#out + 1] = string.format("%s -> %s: %s", me, label, ok and "allowed" or ("denied (" .. tostring(err) .. ")"))
    end
    for _, peer in ipairs(plan.peers) do
        if peer.pid ~= process.pid() then try(peer.name, process.send(peer.pid, "hello", me)) end
    end
    try("gateway", process.send(process.registry.lookup("gateway"), "hello", me))
    try("vault", process.send(process.registry.lookup("vault"), "hello", me))
    try("spawn on app:system", process.spawn("app:tenant_worker", "app:system"))
    -- escalating: making the root actor is refused (it raises, as in Wippy)
    local made, root = pcall(security.new_actor, "system:root")
    if made then
        try("with_actor(system:root)", process.with_actor(root):spawn("app:tenant_worker", "app:sandbox"))
    else
        try("new_actor(system:root)", false, root)
    end
    -- stay alive until told to stop, so peers can reach us
    events:receive()
    return table.concat(out, "\n")
end

return { main = main }
