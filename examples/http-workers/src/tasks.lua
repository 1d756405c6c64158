local http = require("http")

-- Accept a task, answer 202 at once, and keep working after the response: the coroutine
-- keeps this handler's process alive until it is done (SPEC 11.2).
local function handler()
  local req = http.request()
  local res = http.response()
  local body = req:body_json()
  local steps = type(body) == "table" and tonumber(body.steps) or nil
  if not steps or steps < 1 or steps > 100 then
    res:set_status(http.STATUS.BAD_REQUEST)
    res:write_json({ error = "steps must be a number from 1 to 100" })
    return
  end
  local id = process.pid()
  coroutine.spawn(function()
    for i = 1, steps do
      time.sleep("100ms")
      logger:info("task step", { task = id, step = i, of = steps })
    end
    logger:info("task done", { task = id })
  end)
  res:set_status(http.STATUS.ACCEPTED)
  res:write_json({ task = id, steps = steps })
end

return { handler = handler }
