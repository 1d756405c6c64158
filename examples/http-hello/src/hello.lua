local http = require("http")

local function handler()
  local req = http.request()
  local res = http.response()
  res:set_content_type(http.CONTENT.TEXT)
  res:set_status(http.STATUS.OK)
  res:write("Hello, " .. (req:query("name") or "world") .. "!\n")
end

return { handler = handler }
