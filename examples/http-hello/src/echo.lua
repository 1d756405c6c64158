local http = require("http")

local function handler()
  local req = http.request()
  local res = http.response()
  local body, err = req:body_json()
  if err then
    res:set_status(http.STATUS.BAD_REQUEST)
    res:write_json({ error = tostring(err) })
    return
  end
  res:set_status(http.STATUS.OK)
  res:write_json({ got = body, method = req:method(), type = req:content_type() })
end

return { handler = handler }
