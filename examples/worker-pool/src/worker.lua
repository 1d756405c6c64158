local function count_primes(limit)
    local count = 0
    for k = 2, limit - 1 do
        local prime = true
        local d = 2
        while d * d <= k do
            if k % d == 0 then prime = false break end
            d = d + 1
        end
        if prime then count = count + 1 end
    end
    return count
end

local function main(index)
    local inbox = process.inbox()
    while true do
        local msg = inbox:receive()
        if msg:topic() == "stop" then return index end
        local job = msg:payload():data()
        process.send(msg:from(), "result", { worker = index, job = job.id, primes = count_primes(job.limit) })
    end
end

return { main = main }
