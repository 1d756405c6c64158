local queue = require("queue")
local store = require("store")
local logger = require("logger")

local function primes_below(n)
  local count = 0
  for i = 2, n - 1 do
    local prime = true
    for d = 2, math.floor(math.sqrt(i)) do
      if i % d == 0 then prime = false break end
    end
    if prime then count = count + 1 end
  end
  return count
end

-- One job, in a process of its own. Raising puts the message back for another attempt.
local function main(job)
  local msg = queue.message()
  local results = store.get("app:results")
  local tries = (results:get("tries:" .. job.id) or 0) + 1
  results:set("tries:" .. job.id, tries)
  if job.fail_once and tries == 1 then
    error("failing the first attempt on purpose")
  end
  local primes = primes_below(job.n)
  results:set(job.id, { primes = primes, attempts = tries, worker = process.pid(), message = msg:id() })
  logger:info("job done", { id = job.id, primes = primes, attempts = tries })
  return true
end

return { main = main }
