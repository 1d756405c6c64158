local http = require("http")

-- Ask the counter process and wait for its reply, at most one second.
local function handler()
  local res = http.response()
  local replies = process.listen("count.reply")
  local ok, err = process.send("counter", "incr", { reply_to = process.pid() })
  if not ok then
    res:set_status(http.STATUS.SERVICE_UNAVAILABLE)
    res:write_json({ error = tostring(err) })
    return
  end
  local timeout = time.after("1s")
  local r = channel.select { replies:case_receive(), timeout:case_receive() }
  if r.channel == timeout then
    res:set_status(http.STATUS.GATEWAY_TIMEOUT)
    res:write_json({ error = "the counter did not answer" })
    return
  end
  res:set_status(http.STATUS.OK)
  res:write_json({ count = r.value.count, handler = process.pid() })
end

return { handler = handler }
