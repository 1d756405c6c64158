-- A named process that keeps a count: every "incr" message {reply_to} gets the new count
-- back on "count.reply". Stops on CANCEL.
local function main()
  process.registry.register("counter")
  logger:info("counter ready")
  local n = 0
  local inbox, events = process.inbox(), process.events()
  while true do
    local r = channel.select { inbox:case_receive(), events:case_receive() }
    if r.channel == events then
      if r.value.kind == process.event.CANCEL then return n end
    else
      local req = r.value:payload():data() or {}
      n = n + 1
      process.send(req.reply_to, "count.reply", { count = n })
    end
  end
end

return { main = main }
