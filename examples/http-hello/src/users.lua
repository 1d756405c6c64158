local http = require("http")

local function get()
  local req = http.request()
  local id = req:param("id")
  if id == "0" then
    local res = http.response()
    res:set_status(http.STATUS.NOT_FOUND)
    res:write_json({ error = "no user 0" })
    return
  end
  -- nothing written: the returned table is the 200 JSON response
  return { id = id, name = "user " .. id }
end

return { get = get }
