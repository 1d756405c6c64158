-- A hand-written supervisor: spawn_monitored + EXIT events, exponential backoff between
-- restarts (reset when the worker made progress), until the worker reports every job done.
local function main(jobs)
    jobs = tonumber(jobs) or 8
    local events = process.events()
    local progress = process.listen("progress")
    local done, restarts = 0, 0
    local delay, max_delay = 10, 160 -- milliseconds
    while done < jobs do
        local pid = process.spawn_monitored("app:worker", "app:processes", process.pid(), done + 1, jobs)
        local before = done
        while true do
            local r = channel.select { progress:case_receive(), events:case_receive() }
            if r.channel == progress then
                done = r.value
            elseif r.value.kind == process.event.EXIT and r.value.from == pid then
                if r.value.result.error == nil then break end
                restarts = restarts + 1
                if done > before then delay = 10 end -- it got somewhere: start the backoff again
                io.print(string.format("worker %s crashed at job %d (%s); restart #%d in %dms",
                    pid, done + 1, tostring(r.value.result.error), restarts, delay))
                time.sleep(delay * time.MILLISECOND)
                delay = math.min(delay * 2, max_delay)
                break
            end
        end
    end
    io.print(string.format("all %d jobs done after %d restarts", jobs, restarts))
    return 0
end

return { main = main }
