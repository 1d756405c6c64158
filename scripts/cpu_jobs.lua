-- The `cpu` job set of the Erlang anchor (and wippy-bench lua-cpu) in bare Lua, one
-- thread, no runtime: job k counts the primes below 1000*k by trial division, the same
-- loop as CPU_WORKER in crates/bench/src/lua.rs.   lua5.4 scripts/cpu_jobs.lua
local function count(limit)
    local n = 0
    for k = 2, limit - 1 do
        local d = 2
        while true do
            if d * d > k then n = n + 1 break end
            if k % d == 0 then break end
            d = d + 1
        end
    end
    return n
end
local t0 = os.clock()
local total = 0
for k = 1, 120 do total = total + count(1000 * k) end
assert(total == 719415, total)
print(string.format("bare_lua_cpu_result: %d primes", total))
print(string.format("bare_lua_cpu_wall: %.3f ms", (os.clock() - t0) * 1000))
print(string.format("bare_lua_version: %s", _VERSION))
