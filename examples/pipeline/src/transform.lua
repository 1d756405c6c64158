-- Stage 2: validate and compute each record's total.
local function main(next_stage)
    local inbox = process.inbox()
    while true do
        local msg = inbox:receive()
        local topic = msg:topic()
        if topic == "eof" then
            process.send(next_stage, "eof")
            return "transform done"
        elseif topic == "reject" then
            process.send(next_stage, "reject", msg:payload():data())
        else
            local r = msg:payload():data()
            if r.qty <= 0 then
                process.send(next_stage, "reject", string.format("line %d: quantity %d is not positive", r.n, r.qty))
            else
                r.total = r.qty * r.price
                process.send(next_stage, "record", r)
            end
        end
    end
end

return { main = main }
