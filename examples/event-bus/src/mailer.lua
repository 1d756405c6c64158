-- Sends a (pretend) mail for every new order: only app.orders / created.
local function main(shop)
    local sub = assert(events.subscribe("app.orders", "created"))
    process.send(shop, "ready", "mailer")
    local sent = {}
    local inbox = process.inbox()
    while true do
        local r = channel.select { sub:channel():case_receive(), inbox:case_receive() }
        if r.channel ~= sub:channel() then break end
        sent[#sent + 1] = "mail to " .. r.value.data.email .. " for order " .. r.value.data.id
    end
    sub:close()
    process.send(shop, "report", { who = "mailer", lines = sent })
end

return { main = main }
