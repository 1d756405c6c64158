-- Stage 3: totals per item; at end of stream, the summary goes to whoever asked.
local function main(reply_to)
    local inbox = process.inbox()
    local by_item, rejected, records, total = {}, {}, 0, 0
    while true do
        local msg = inbox:receive()
        local topic = msg:topic()
        if topic == "record" then
            local r = msg:payload():data()
            local row = by_item[r.item] or { item = r.item, qty = 0, total = 0 }
            row.qty, row.total = row.qty + r.qty, row.total + r.total
            by_item[r.item] = row
            records, total = records + 1, total + r.total
        elseif topic == "reject" then
            table.insert(rejected, msg:payload():data())
        elseif topic == "eof" then
            local items = {}
            for _, row in pairs(by_item) do table.insert(items, row) end
            table.sort(items, function(a, b) return a.item < b.item end)
            process.send(reply_to, "result", { items = items, rejected = rejected, records = records, total = total })
            return "aggregate done"
        end
    end
end

return { main = main }
