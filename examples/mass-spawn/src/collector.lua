-- Spawns N long-lived workers, each with its own 1s ticker reporting here; logs how many
-- are alive and how many ticks arrived, every 2 seconds.
local function main()
    local n = tonumber((env.get("WORKERS"))) or 10000
    local ticks = process.listen("tick")
    local events = process.events()
    local started = time.now()
    for i = 1, n do
        process.spawn_monitored("app:worker", "app:processes", process.pid(), i)
    end
    logger:info("workers spawned", { workers = n, took = tostring(time.now():sub(started)) })
    local alive, total, window = n, 0, 0
    local stats = time.ticker("2s")
    while true do
        local r = channel.select { ticks:case_receive(), stats:channel():case_receive(), events:case_receive() }
        if r.channel == ticks then
            total, window = total + 1, window + 1
        elseif r.channel == events then
            if r.value.kind == process.event.CANCEL then
                logger:info("collector stopping", { ticks = total })
                return total
            elseif r.value.kind == process.event.EXIT then
                alive = alive - 1
            end
        else
            logger:info("stats", { workers = alive, ticks = total, ticks_per_s = window / 2 })
            window = 0
        end
    end
end

return { main = main }
