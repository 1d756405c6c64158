local function show(label, v)
    io.print(label .. ": " .. v:string())
end

local function main()
    local v0 = registry.current_version()
    show("loaded", v0)
    local s = registry.get("app:settings")
    io.print("theme: " .. s.data.theme)

    -- one transaction: change a setting and add a feature flag
    local changes = registry.snapshot():changes()
    changes:update({ id = "app:settings", kind = "registry.entry", meta = { type = "config" },
        data = { theme = "dark", page_size = 50 } })
    changes:create({ id = "app:flag_search", kind = "registry.entry", meta = { type = "flag" }, data = { on = true } })
    for _, op in ipairs(changes:ops()) do io.print("  " .. op.kind .. " " .. op.entry.id) end
    local v1 = assert(changes:apply())
    show("applied", v1)
    io.print("previous of it is the loaded one: " .. tostring(v1:previous() == v0))
    io.print("theme: " .. registry.get("app:settings").data.theme)
    io.print("flags: " .. #registry.find({ meta = { type = "flag" } }))

    -- the old version is still there to read
    local old = assert(registry.snapshot_at(v1:id()):version():previous())
    local then_ = registry.history():snapshot_at(old)
    io.print("theme at " .. old:string() .. ": " .. then_:get("app:settings").data.theme)

    -- what changed between them
    local delta = registry.build_delta(then_:entries(), registry.snapshot():entries())
    for _, d in ipairs(delta) do io.print("  delta " .. d.kind .. " " .. d.entry.id) end

    -- roll back: the loaded entries become current again, as a new version
    assert(registry.apply_version(v0))
    show("rolled back", registry.current_version())
    io.print("theme: " .. registry.get("app:settings").data.theme)
    io.print("flags: " .. #registry.find({ meta = { type = "flag" } }))
    io.print("versions: " .. #registry.versions())
    return 0
end

return { main = main }
