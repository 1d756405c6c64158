local http = require("http")

-- Spawn a worker process for the job and wait (at most 5s) for its result.
local function handler()
  local req = http.request()
  local res = http.response()
  local n = tonumber(req:param("n"))
  if not n or n < 2 or n > 10000000 then
    res:set_status(http.STATUS.BAD_REQUEST)
    res:write_json({ error = "n must be a number from 2 to 10000000" })
    return
  end
  local done = process.listen("primes.done")
  local worker, err = process.spawn("app:worker", "app:processes", process.pid(), n)
  if not worker then
    res:set_status(http.STATUS.INTERNAL_ERROR)
    res:write_json({ error = tostring(err) })
    return
  end
  local timeout = time.after("5s")
  local r = channel.select { done:case_receive(), timeout:case_receive() }
  if r.channel == timeout then
    process.terminate(worker)
    res:set_status(http.STATUS.GATEWAY_TIMEOUT)
    res:write_json({ error = "the worker took too long" })
    return
  end
  res:set_status(http.STATUS.OK)
  res:write_json(r.value)
end

return { handler = handler }
