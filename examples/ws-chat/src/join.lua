local http = require("http")

local function handler()
    local req, res = http.request(), http.response()
    local room = process.registry.lookup("chat.room")
    if not room then
        res:set_status(http.STATUS.SERVICE_UNAVAILABLE)
        return res:write("the room is not open yet")
    end
    -- the relay takes it from here: this client's frames go to the room as "chat.say"
    res:set_header("X-WS-Relay", json.encode({
        target_pid = room,
        message_topic = "chat.say",
        metadata = { user = req:query("user") or "anonymous" },
    }))
end

return { handler = handler }
