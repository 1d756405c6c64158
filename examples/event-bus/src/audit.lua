-- Records every app.* event until told to stop, then reports the log.
local function main(shop)
    local sub = assert(events.subscribe("app.*"))
    process.send(shop, "ready", "audit")
    local log = {}
    local inbox = process.inbox()
    while true do
        local r = channel.select { sub:channel():case_receive(), inbox:case_receive() }
        if r.channel ~= sub:channel() then break end
        local ev = r.value
        log[#log + 1] = ev.system .. " " .. ev.kind .. " " .. ev.path
    end
    sub:close()
    process.send(shop, "report", { who = "audit", lines = log })
end

return { main = main }
