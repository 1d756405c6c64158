-- Count the primes below n and send the answer to `reply_to`.
local function main(reply_to, n)
  local count = 0
  for i = 2, n - 1 do
    local prime = true
    for d = 2, math.floor(math.sqrt(i)) do
      if i % d == 0 then prime = false break end
    end
    if prime then count = count + 1 end
  end
  process.send(reply_to, "primes.done", { n = n, primes = count, worker = process.pid() })
end

return { main = main }
