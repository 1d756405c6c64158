local http = require("http")

local function handler()
  local req = http.request()
  local res = http.response()
  res:set_content_type(http.CONTENT.JSON)
  res:set_status(http.STATUS.OK)
  res:write_json({ message = "hello", n = tonumber(req:query("n")) or 0 })
end

return { handler = handler }
