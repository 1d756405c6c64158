-- Reads variables through their storages, writes some back, and shows where they went.
local function main()
    io.print("app: " .. env.get("APP_NAME") .. " in " .. env.get("region"))
    io.print("token before: " .. env.get("token"))

    -- memory: counts this run's visits (starts from its default)
    for _ = 1, 3 do
        assert(env.set("visits", tonumber(env.get("visits")) + 1))
    end
    io.print("visits: " .. env.get("visits"))

    -- through the router: written to the file, read back from it
    assert(env.set("token", "t-" .. env.get("visits")))
    io.print("token after: " .. env.get("token"))

    -- a read-only variable refuses
    local ok, err = env.set("region", "us-east")
    io.print("set region: " .. tostring(ok) .. " (" .. tostring(err) .. ")")

    local missing, merr = env.get("NOPE")
    io.print("NOPE: " .. tostring(missing) .. " (" .. merr:kind() .. ")")
    return 0
end

return { main = main }
