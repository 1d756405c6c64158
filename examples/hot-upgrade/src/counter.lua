-- A counter that keeps its count across code upgrades: it opts in to OUTDATED events and,
-- when its code changes, upgrades itself, handing its state to the new code.
local LABEL = "v1"

local function main(count)
    count = count or 0
    process.set_options({ upgradable = true })
    logger:info("counter running", { version = LABEL, count = count })
    local events = process.events()
    local tick = time.ticker("300ms")
    while true do
        local r = channel.select { tick:channel():case_receive(), events:case_receive() }
        if r.channel == events then
            local ev = r.value
            if ev.kind == process.event.OUTDATED then
                logger:info("new code available, upgrading", { sources = table.concat(ev.sources, ","), count = count })
                process.upgrade(nil, count)
            elseif ev.kind == process.event.CANCEL then
                return count
            end
        else
            count = count + 1
            logger:info("tick", { version = LABEL, count = count })
        end
    end
end

return { main = main }
