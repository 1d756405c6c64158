local http = require("http")
local store = require("store")

-- GET /api/jobs/{id}: the result, or 404 while the job is still queued or running
local function handler()
  local req, res = http.request(), http.response()
  local id = req:param("id")
  local r = store.get("app:results"):get(id)
  if r == nil then
    res:set_status(http.STATUS.NOT_FOUND)
    res:write_json({ id = id, status = "pending" })
    return
  end
  res:write_json({ id = id, status = "done", primes = r.primes, attempts = r.attempts, worker = r.worker })
end

return { handler = handler }
