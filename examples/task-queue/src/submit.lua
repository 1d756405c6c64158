local http = require("http")
local queue = require("queue")
local uuid = require("uuid")

-- POST /api/jobs {"n": 10000}: queue a job counting the primes below n; 202 with its ID
local function handler()
  local req, res = http.request(), http.response()
  local body = req:body_json()
  local n = type(body) == "table" and math.tointeger(body.n)
  if not n or n < 2 or n > 10000000 then
    res:set_status(http.STATUS.BAD_REQUEST)
    res:write_json({ error = "n must be an integer from 2 to 10000000" })
    return
  end
  local id = uuid.v4()
  local ok, err = queue.publish("app:jobs", { id = id, n = n, fail_once = body.fail_once == true })
  if not ok then
    res:set_status(http.STATUS.SERVICE_UNAVAILABLE)
    res:write_json({ error = tostring(err) })
    return
  end
  res:set_status(http.STATUS.ACCEPTED)
  res:write_json({ id = id })
end

return { handler = handler }
