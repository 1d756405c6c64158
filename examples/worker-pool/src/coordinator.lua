-- Fans `jobs` jobs out to `n` spawned workers (round robin), collects every result, and
-- prints what each worker did and the total.
local function main(n, jobs)
    n, jobs = tonumber(n) or 4, tonumber(jobs) or 20
    local results = process.listen("result")
    local workers = {}
    for i = 1, n do
        workers[i] = process.spawn_linked("app:worker", "app:processes", i)
    end
    local started = time.now()
    for job = 1, jobs do
        -- job k: count the primes below 1000 * k
        process.send(workers[(job - 1) % n + 1], "job", { id = job, limit = 1000 * job })
    end
    local total, by_worker = 0, {}
    for _ = 1, jobs do
        local r = channel.select { results:case_receive(), time.after("30s"):case_receive() }
        if r.channel ~= results then return nil, "timed out waiting for results" end
        total = total + r.value.primes
        by_worker[r.value.worker] = (by_worker[r.value.worker] or 0) + 1
    end
    for i = 1, n do
        io.print(string.format("worker %d (%s) did %d jobs", i, workers[i], by_worker[i] or 0))
        process.send(workers[i], "stop")
    end
    io.print(string.format("%d jobs on %d workers: %d primes in total (%s)", jobs, n, total, tostring(time.now():sub(started))))
    return 0
end

return { main = main }
