-- The shard prelude: run once per shard, with the shard's Rust primitives `R` and the
-- shared (locked) library tables `LIBS`. It owns everything a Lua process does inside its
-- own VM time: its tasks (main and coroutine.spawn-ed ones, their ready queue), channels and
-- select, mailbox-to-channel routing (SPEC 4.3), lifecycle event tables (4.4), timers'
-- channels, the coroutine wrappers that pass runtime yields through user coroutines, and
-- the per-process environment (_ENV and library proxies).
--
-- It must never: keep a reference from shared state to one process's tables (everything a
-- process owns hangs off its own state table P, which only its coroutines and S[1] reach), or
-- expose a shared table to user code (user code only ever sees per-process proxies).
local R, LIBS = ...
-- Library parts compiled on a VM's first use of the library (env_mt below runs them).
local LAZY = {}
for _, name in ipairs(R.lazy_libs) do LAZY[name] = function() R.build_lib(name) end end

local raw_create, raw_resume, raw_yield, raw_status, raw_running, raw_isyieldable, raw_close =
  coroutine.create, coroutine.resume, coroutine.yield, coroutine.status, coroutine.running,
  coroutine.isyieldable, coroutine.close
local pack, unpack, tinsert = table.pack, table.unpack, table.insert
-- (`type` is the base library's, vm/prims.rs fast_type: its names are upvalues)
local select, type, setmetatable, getmetatable, error, pairs, next, rawget, rawset, tostring, pcall, xpcall =
  select, LIBS._base.type, setmetatable, getmetatable, error, pairs, next, rawget, rawset, tostring, pcall, xpcall
local rt_cur, rt_preempted, rt_error, rt_time, rt_memfail = R.cur, R.preempted, R.error, R.time_from_nanos, R.memfail
-- P's ready queue or pending count may have become non-empty: every place that makes one
-- so calls it (Rust's receive skips reading them while neither can have)
local rt_dirty = R.dirty
local resume_task = R.resume_task -- coroutine.resume for a task, with S[2] and R.cur set in it
local raw_meta = R.raw_meta -- a table's metatable, past __metatable
local WAIT = R.WAIT         -- yielded to Rust to take the next runtime event

local S = { false, false } -- S[1]: the running process's state P; S[2]: the running task
                      -- while a spawned task runs, false while main runs (a process's
                      -- coroutine only ever yields to Rust while main runs). Rust sets
                      -- both before every resume; the slots exist from the start, so
                      -- setting them never allocates.
local BLOCK = {}      -- a task yields this to wait (passed up through user coroutines)
local DONE = {}       -- a task body returns this first when it finished
local RAISE = {}      -- a waker passes this first to make the woken call raise
local MEMERR = "not enough memory"
local NILV = {}       -- a sent nil, while it waits in a sender

-- A task and the process state are arrays (slots named by the constants below, which the
-- compiler folds into the instructions): no hash part, no key lookups, and every slot
-- exists from the constructor on, so setting one never grows the table. A task is
-- { co, sel(false), ext, args, a, b, sv, qn }; main's task is the process state P itself,
-- whose own slots follow the task's.
local CO <const> = 1      -- the task's coroutine
local SEL <const> = 2     -- false for a task (a select's waiter record has its select here)
local EXT <const> = 3     -- waiting on something outside the process (counted in P[NEXT])
local ARGS <const> = 4    -- a spawned task's first-resume arguments until it starts
local A <const> = 5       -- the values a waker hands the task
local B <const> = 6
local SV <const> = 7      -- the value a blocked sender offers (NILV for nil)
local QN <const> = 8      -- the next task in the ready queue
local RH <const> = 9      -- P: the ready queue's first and last task (false when empty)
local RT <const> = 10
local NEXT <const> = 11   -- P: how many tasks wait on something outside the process
local NPEND <const> = 12  -- P: how many mailbox items are pending (in P[X].pending)
local ENV <const> = 13    -- P: main's environment
local LISTEN <const> = 14 -- P: topic -> listen channel (made on first listen)
local INBOX <const> = 15  -- P: the inbox channel (made on first use)
local X <const> = 16      -- P: the rarer parts, made on first use: pending, events, cmds,
                          -- execs, required, upgraded
-- (16 slots: a parked process's state is one 256-byte array.)
-- A select's waiter record: { t, sel, ch, send, v } (SEL in the same slot as a task's).
local W_T <const> = 1
local W_CH <const> = 3
local W_SEND <const> = 4
local W_V <const> = 5
-- A channel is an array too: { n, size, handle, flags, topic, sq, rq, buf }. The inbox is made
-- with the first four only (a parked process stays small; the rest reads nil through the
-- metatable); other channels are made with every slot. Rust's receive (R.make_receive)
-- reads these same slots; the flags are one integer, so it reads them with one lookup.
local C_N <const> = 1       -- values in the buffer
local C_SIZE <const> = 2    -- buffer capacity
local C_H <const> = 3       -- the channel's handle (the userdata process code holds)
local C_FLAGS <const> = 4   -- F_EXT | F_PLAIN | F_CLOSED
local C_TOPIC <const> = 5   -- a listen channel's topic (false otherwise)
local C_SQ <const> = 6      -- waiting senders, waiting receivers: queues (false until used)
local C_RQ <const> = 7
local C_BUF <const> = 8     -- the buffer: a queue (false until used)
local F_EXT <const> = 1     -- fed from outside the process (mailbox, timers, events)
local F_PLAIN <const> = 2   -- a listen channel that delivers payloads, not messages
local F_CLOSED <const> = 4
-- A queue (waiters, a buffer) is { head, tail, items... }; empty when head > tail.
local Q_H <const> = 1
local Q_T <const> = 2

-------------------------------------------------------------------------------------------
-- Tasks: a process's main function and its coroutine.spawn-ed functions. Main runs on the
-- process's own coroutine, which Rust resumes; when main waits, the scheduling loop runs
-- right there (on main's stack) and runs the other tasks until main is woken, or yields
-- WAIT to Rust for the next runtime event. So a process that only uses main costs one
-- coroutine.
-------------------------------------------------------------------------------------------
-- Put task t at the back of the ready queue, handing it a, b (what it is resumed with).
local function wake(P, t, a, b)
  t[A], t[B] = a, b
  if t[EXT] then t[EXT] = false; P[NEXT] = P[NEXT] - 1 end
  local last = P[RT]
  if last then last[QN] = t else P[RH] = t; rt_dirty() end
  P[RT] = t
end

local sched -- forward: the scheduling loop (below, with the router)
local handle -- forward: one runtime event (below, with the router)

-- Wait until a waker hands this task its result. On main's coroutine that means running
-- the scheduler in place; anywhere else, yield to whoever resumed us (the scheduler, or a
-- coroutine wrapper that passes it on).
local function block()
  local P = S[1]
  if raw_running() == P[CO] then return sched(P) end
  return raw_yield(BLOCK)
end

-------------------------------------------------------------------------------------------
-- Channels. Waiter queues and the buffer are made on first use.
-------------------------------------------------------------------------------------------
-- Process code never holds a channel's state table (it is the runtime's: counts, flags,
-- waiting tasks): it holds the channel's handle, a userdata whose user value is the state
-- (raw.rs). The methods (Chan) take handles; everything below them takes states. A channel
-- is only ever used by the process that made it (it cannot be sent), so its owner is the
-- running process, S[1].
local Chan = {}
local ChanMT = { __index = Chan, __name = "channel state", __metatable = "channel" }
local HandleMT = { __index = Chan, __name = "channel", __metatable = "channel" }
R.set_channel_mt(ChanMT)
local new_handle = R.make_handle(HandleMT)
local chan_of = R.make_chan_of(ChanMT)

local function newchan(P, size, ext, topic, plain)
  -- N, SIZE, HANDLE, FLAGS, TOPIC, SQ, RQ, BUF: waiter queues and the buffer come
  -- on first use (a main that waits directly never makes its receiver queue)
  local flags = (ext and F_EXT or 0) | (plain and F_PLAIN or 0)
  local ch = setmetatable({ 0, size, false, flags, topic or false, false, false, false }, ChanMT)
  ch[C_H] = new_handle(ch)
  return ch
end

-- The process's rarer parts (P[X]), made on first use.
local function rare(P)
  local x = P[X]
  if not x then x = {}; P[X] = x end
  return x
end
-- One of the process's rarer parts (P[X][key]), or nil when it was never made.
local function rare_get(P, key)
  local x = P[X]
  return x and x[key]
end

local function q_push(ch, slot, w)
  local q = ch[slot]
  if not q then q = { 3, 2 }; ch[slot] = q end
  local i = q[Q_T] + 1; q[Q_T] = i; q[i] = w
end
-- First waiter whose select has not fired yet, removed from the queue.
local function q_pop(q)
  if not q then return nil end
  local h = q[Q_H]
  while h <= q[Q_T] do
    local w = q[h]; q[h] = nil; h = h + 1
    local sel = w[SEL]
    if not sel or not sel.done then q[Q_H] = h; return w end
  end
  q[Q_H], q[Q_T] = 3, 2
  return nil
end

-- Hand a waiter its result. A receiver gets (value, ok); a sender gets true. A waiter is
-- a task itself, or for select a small record (W_T, SEL, W_CH, W_SEND, W_V).
local function fire(P, w, v, ok)
  local sel = w[SEL]
  if sel then
    sel.done = true
    if w[W_SEND] then
      wake(P, w[W_T], { channel = w[W_CH], ok = true })
    else
      wake(P, w[W_T], { channel = w[W_CH], value = v, ok = ok })
    end
  elseif w[SV] ~= nil then
    w[SV] = nil
    wake(P, w, true)
  else
    wake(P, w, v, ok)
  end
end

local function sent_value(w)
  local v
  if w[SEL] then v = w[W_V] else v = w[SV] end
  if v == NILV then return nil end
  return v
end

local drain -- forward: route pending mailbox messages (defined with the router)

local function buf_push(ch, v)
  local b = ch[C_BUF]
  if not b then b = { 3, 2 }; ch[C_BUF] = b end
  local i = b[Q_T] + 1; b[Q_T] = i; b[i] = v
  ch[C_N] = ch[C_N] + 1
end

-- Receive without blocking: true, v, ok -- or false when it would block.
local function try_recv(ch)
  local n = ch[C_N]
  if n > 0 then
    local b = ch[C_BUF]
    local h = b[Q_H]
    local v = b[h]; b[h] = nil; b[Q_H] = h + 1
    ch[C_N] = n - 1
    if n == 1 then b[Q_H], b[Q_T] = 3, 2 end
    local P = S[1]
    local w = q_pop(ch[C_SQ])
    if w then
      buf_push(ch, sent_value(w))
      fire(P, w)
    end
    if ch[C_FLAGS] & F_EXT ~= 0 and P[NPEND] > 0 then drain(P) end
    return true, v, true
  end
  local w = q_pop(ch[C_SQ])
  if w then
    local v = sent_value(w)
    fire(S[1], w)
    return true, v, true
  end
  if ch[C_FLAGS] & F_CLOSED ~= 0 then return true, nil, false end
  return false
end

local function try_send(ch, v)
  if ch[C_FLAGS] & F_CLOSED ~= 0 then error("send on a closed channel", 3) end
  local w = q_pop(ch[C_RQ])
  if w then fire(S[1], w, v, true); return true end
  if ch[C_N] < ch[C_SIZE] then
    buf_push(ch, v)
    return true
  end
  return false
end

-- The state of channel handle `h`, or a "bad argument" error.
local function check_chan(h, fname)
  local ch = chan_of(h)
  if not ch then
    error("bad argument #1 to '" .. fname .. "' (channel expected, got " .. type(h) .. ")", 3)
  end
  return ch
end

function Chan.send(h, v)
  local ch = check_chan(h, "send")
  if try_send(ch, v) then return true end
  local P = S[1]
  local t = S[2] or P
  t[SV] = v == nil and NILV or v
  q_push(ch, C_SQ, t)
  local a, b = block()
  if a == RAISE then error(b, 2) end
  return true
end

-- Wait in a receive on `ch` (nothing to take now).
local function wait_receive(ch)
  local P = S[1]
  local t = S[2] or P
  q_push(ch, C_RQ, t)
  if ch[C_FLAGS] & F_EXT ~= 0 then
    t[EXT] = true; P[NEXT] = P[NEXT] + 1
    if P[NPEND] > 0 then drain(P) end
  end
  if raw_running() == P[CO] then return sched(P) end
  return raw_yield(BLOCK)
end

-- Main's direct wait was answered by something other than its value: from here on it
-- waits like any receiver (queued on the channel, counted as waiting on the mailbox),
-- the event is handled, and the scheduler runs.
local function direct_other(P, ch, ...)
  q_push(ch, C_RQ, P)
  P[EXT] = true; P[NEXT] = P[NEXT] + 1
  handle(P, ...)
  return sched(P)
end

-- Chan.receive is a C function (R.make_receive): it checks the argument, and when main
-- alone waits on a channel the mailbox feeds and nothing else can run, it waits right there
-- for the next event (on a plain listen channel the runtime hands a one-value message on
-- its topic straight back as (0, value); any other answer goes to direct_other). The rest
-- of a receive is this:
local function receive(ch)
  local ok, v, got = try_recv(ch)
  if ok then return v, got end
  return wait_receive(ch)
end
Chan.receive = R.make_receive(ChanMT, receive, direct_other, S)

local function close(ch)
  local flags = ch[C_FLAGS]
  if flags & F_CLOSED ~= 0 then return end
  ch[C_FLAGS] = flags | F_CLOSED
  local P = S[1]
  while true do
    local w = q_pop(ch[C_RQ])
    if not w then break end
    fire(P, w, nil, false)
  end
  while true do
    local w = q_pop(ch[C_SQ])
    if not w then break end
    if w[SEL] then w[SEL].done = true; w = w[W_T] else w[SV] = nil end
    wake(P, w, RAISE, "send on a closed channel")
  end
end

function Chan.close(h) close(check_chan(h, "close")) end
function Chan.case_send(h, v) check_chan(h, "case_send"); return { ch = h, send = true, v = v } end
function Chan.case_receive(h) check_chan(h, "case_receive"); return { ch = h } end
function Chan.is_closed(h) return check_chan(h, "is_closed")[C_FLAGS] & F_CLOSED ~= 0 end

local function select_(cases, default)
  if type(cases) ~= "table" then
    error("bad argument #1 to 'select' (table expected, got " .. type(cases) .. ")", 2)
  end
  if default == nil then default = cases.default end
  local n = #cases
  for i = 1, n do
    local c = cases[i]
    local ch = type(c) == "table" and chan_of(c.ch)
    if not ch then
      error("bad argument #1 to 'select' (case " .. i .. " is not a channel case)", 2)
    end
    if c.send then
      if try_send(ch, c.v) then return { channel = c.ch, ok = true } end
    else
      local ok, v, got = try_recv(ch)
      if ok then return { channel = c.ch, value = v, ok = got } end
    end
  end
  if default then return { default = true, ok = true } end
  if n == 0 then error("select with no cases and no default blocks forever", 2) end
  local P = S[1]
  local t = S[2] or P
  local sel = { done = false }
  local ext = false
  for i = 1, n do
    local c = cases[i]
    -- a waiter record: W_T, SEL, W_CH (the handle, for the result), W_SEND, W_V
    local ch = chan_of(c.ch)
    q_push(ch, c.send and C_SQ or C_RQ, { t, sel, c.ch, c.send or false, c.v })
    ext = ext or ch[C_FLAGS] & F_EXT ~= 0
  end
  if ext then
    t[EXT] = true; P[NEXT] = P[NEXT] + 1
    if P[NPEND] > 0 then drain(P) end
  end
  local a, b = block()
  -- this select's records on the channels that did not fire are dead: take them out now
  -- (they are at the queue's ends unless another task queued since), or a channel that
  -- never fires (a service's events channel) keeps one per select, forever
  for i = 1, n do
    local c = cases[i]
    local q = chan_of(c.ch)[c.send and C_SQ or C_RQ]
    if q then
      local h, tl = q[Q_H], q[Q_T]
      while tl >= h do
        local s = q[tl][SEL]
        if not (s and s.done) then break end
        q[tl] = nil; tl = tl - 1
      end
      while h <= tl do
        local s = q[h][SEL]
        if not (s and s.done) then break end
        q[h] = nil; h = h + 1
      end
      if h > tl then q[Q_H], q[Q_T] = 3, 2 else q[Q_H], q[Q_T] = h, tl end
    end
  end
  if a == RAISE then error(b, 2) end
  return a
end

local channel = {}
function channel.new(size)
  if size ~= nil and (math.type(size) ~= "integer" or size < 0) then
    error("bad argument #1 to 'new' (non-negative integer expected, got " .. tostring(size) .. ")", 2)
  end
  return newchan(S[1], size or 0, false)[C_H]
end
channel.select = select_
LIBS.channel = channel

-------------------------------------------------------------------------------------------
-- Messages, payloads, lifecycle events and their routing (SPEC 4.3, 4.4)
-------------------------------------------------------------------------------------------
-- A payload is { value, format }: format nil is a Lua value (lua/any, or golang/error for
-- an error object); otherwise the value is the encoded string (SPEC 12.8).
local Payload = {}
local PayloadMT = { __index = Payload, __name = "payload", __metatable = "payload" }
local FORMAT = {
  JSON = "json/plain", YAML = "yaml/plain", STRING = "text/plain", BYTES = "application/octet-stream",
  MSGPACK = "application/msgpack", LUA = "lua/any", GOLANG = "golang/any", ERROR = "golang/error",
}
local KNOWN_FORMAT = {}
for _, f in pairs(FORMAT) do KNOWN_FORMAT[f] = true end
local rt_transcode, rt_is_error = R.transcode, R.is_error
local function newpayload(v) return setmetatable({ v }, PayloadMT) end
function Payload.get_format(p)
  if p[2] then return p[2] end
  if type(p[1]) == "userdata" and rt_is_error(p[1]) then
    return FORMAT.ERROR
  end
  return FORMAT.LUA
end
function Payload.data(p)
  local f = p[2]
  if not f then return p[1] end
  local v, why = rt_transcode(p[1], f, FORMAT.LUA)
  if why then return nil, rt_error("Internal", "payload: " .. why) end
  return v
end
Payload.unmarshal = Payload.data
function Payload.transcode(p, fmt)
  if type(fmt) ~= "string" or not KNOWN_FORMAT[fmt] or fmt == FORMAT.GOLANG or fmt == FORMAT.ERROR then
    return nil, rt_error("Internal", "payload: cannot transcode to format " .. tostring(fmt))
  end
  local from = p[2] or FORMAT.LUA
  local v, why = rt_transcode(p[1], from, fmt)
  if why then return nil, rt_error("Internal", "payload: " .. why) end
  if fmt == FORMAT.LUA then return newpayload(v) end
  -- slot 3 keeps the Lua value: a send carries that (read_at in vm/raw.rs), so the receiver's
  -- data() is the value, not its encoding
  local lv = p[3]
  if from == FORMAT.LUA then lv = p[1] end
  return setmetatable({ v, fmt, lv }, PayloadMT)
end
PayloadMT.__tostring = function(p) return "payload{format=" .. Payload.get_format(p) .. "}" end
R.set_payload_mt(PayloadMT)
LIBS.payload = { new = function(v) return newpayload(v) end, format = FORMAT }

local Msg = {}
local MsgMT = { __index = Msg, __name = "message", __metatable = "message" }
function Msg.topic(m) return m.tp end
function Msg.from(m) return m.fr end
function Msg.payload(m)
  local n = m.n
  if n == 0 then return nil end
  if n == 1 then return newpayload(m[1]) end
  local arr = {}
  for i = 1, n do arr[i] = newpayload(m[i]) end
  return arr
end
R.set_message_mt(MsgMT)

-- The channel a pending item goes to now.
local function target(P, m)
  if m.ev then return rare_get(P, "events") end
  local l = P[LISTEN]
  if l then
    l = l[m.tp]
    if l then return l end
  end
  return P[INBOX]
end

-- The value a channel delivers for message `m`.
local function form(ch, m)
  if m.ev or ch[C_FLAGS] & F_PLAIN == 0 then return m.ev or m end
  local n = m.n
  if n == 1 then return m[1] end
  if n == 0 then return nil end
  local arr = {}
  for i = 1, n do arr[i] = m[i] end
  return arr
end

-- Try to hand a value to `ch` now (a waiting receiver, or room in its buffer).
local function offer_value(P, ch, v)
  local w = q_pop(ch[C_RQ])
  if w then fire(P, w, v, true); return true end
  if ch[C_N] < ch[C_SIZE] then buf_push(ch, v); return true end
  return false
end

-- The same for message `m`, shaped for `ch` only when it can take it.
local function offer(P, ch, m)
  local q = ch[C_RQ]
  if (q and q[Q_H] <= q[Q_T]) or ch[C_N] < ch[C_SIZE] then return offer_value(P, ch, form(ch, m)) end
  return false
end

-- The pending items (mailbox items no channel could take yet), oldest first, are
-- x.pending[x.ph .. x.ph + P[NPEND] - 1]; x.pc counts them by the channel each goes to
-- (NOCH: none yet). An item's channel changes only when the process listens, unlistens or
-- makes its inbox or events channel, and each of those runs drain_all, which recounts.
-- A service with a deep mailbox takes and queues each item in constant time: only an
-- item's own channel can take it, so only the oldest items are ever looked at, unless
-- items for other channels wait behind one that is stuck.
local NOCH = {}

-- Deliver what can be delivered of the pending items, in order; an item stays when its
-- channel cannot take it, and so does every later item for the same channel.
local function drain_all(P)
  local x = P[X]
  local pend, h = x.pending, x.ph or 1
  local kept, stuck, pc = {}, {}, {}
  local n = 0
  for i = h, h + P[NPEND] - 1 do
    local m = pend[i]
    local ch = target(P, m)
    if ch and not stuck[ch] and offer(P, ch, m) then
      -- delivered
    else
      local k = ch or NOCH
      stuck[k] = true
      n = n + 1; kept[n] = m
      pc[k] = (pc[k] or 0) + 1
    end
  end
  x.pending, x.ph, x.pc, P[NPEND] = kept, 1, pc, n
end

-- The same after a channel may have made room (a receive, a wait): the oldest items go
-- while their channels take them; the first that stays holds back every later item for
-- its channel, so the rest is looked at only when some of it is for another one.
drain = function(P)
  local x = P[X]
  local pc = x.pc
  if not pc then return drain_all(P) end -- (what an upgrade carried over: count it first)
  local pend, h, n = x.pending, x.ph, P[NPEND]
  while n > 0 do
    local m = pend[h]
    local ch = target(P, m)
    if not (ch and offer(P, ch, m)) then
      x.ph, P[NPEND] = h, n
      if pc[ch or NOCH] < n then drain_all(P) end
      return
    end
    pend[h] = nil; h = h + 1; n = n - 1
    local c = pc[ch] - 1
    pc[ch] = c > 0 and c or nil -- (no key left for a channel that may be let go)
  end
  -- (a queue that grew long is let go: its table keeps the room it grew to)
  if h > 32 then x.pending = {} end
  x.ph, P[NPEND] = 1, 0
end

local function queue_pending(P, m)
  local x = rare(P)
  local n = P[NPEND]
  if n > 0 and not x.pc then drain_all(P); n = P[NPEND] end -- (an upgrade's carry)
  local ch = target(P, m)
  local k = ch or NOCH
  local pc = x.pc
  if n > 0 then
    -- nothing can have made room for an older item since the last drain (every receive
    -- and wait drains): only this one may go now, when no older one waits for its channel
    if ch and not pc[k] and offer(P, ch, m) then return end
  elseif not pc then
    pc = {}; x.pc = pc; x.pending = {}; x.ph = 1
  end
  x.pending[x.ph + n] = m
  P[NPEND] = n + 1
  pc[k] = (pc[k] or 0) + 1
  rt_dirty()
end

local function arrive(P, m)
  if P[NPEND] == 0 then
    local ch = target(P, m)
    if ch and offer(P, ch, m) then return end
  end
  queue_pending(P, m)
end

local EXIT, LINK_DOWN, CANCEL, OUTDATED = "pid.exit", "pid.link.down", "pid.cancel", "pid.outdated"

-- The exit of a funcs.async call completes its future (set with funcs below).
local on_future

-- A canceled caller cancels the function calls it is making (SPEC 12.4.4): each callee gets
-- CANCEL "caller context canceled"; a funcs.call waiting on one returns the cancellation at
-- once (the callee's later exit is dropped); a future completes when its callee ends.
local function cancel_calls(P, execs)
  local calls = rare_get(P, "calls")
  for pid, w in pairs(execs) do
    local future = w and rawget(w, "future")
    if future or (calls and calls[pid]) then
      R.cancel_call(pid, "caller context canceled")
      if not future then
        execs[pid] = false
        calls[pid] = nil
        wake(P, w, nil, rt_error("Canceled", "context canceled"))
      end
    end
  end
end

-- The tag of a runtime event Rust passes (vm/abi.rs), and the event's values after it.
local EV_MESSAGE <const> = "m"    -- topic, from, n, payloads...
local EV_COMPLETION <const> = "t" -- id, ok, value
local EV_EXIT <const> = "x"       -- from, at, ok, value|error
local EV_LINK_DOWN <const> = "l"  -- from, at, error
local EV_CANCEL <const> = "c"     -- from, at, reason

-- One runtime event, as Rust passes it.
handle = function(P, kind, a, b, c, d, ...)
  if kind == EV_MESSAGE and a == "@outdated" then
    -- the entry or an import changed: one OUTDATED event, merged into one still pending
    local x = P[X]
    local pend, h = P[NPEND] > 0 and x.pending, x and x.ph or 1
    for i = h, h + P[NPEND] - 1 do
      local ev = pend[i].ev
      if ev and ev.kind == OUTDATED then
        for _, id in ipairs(d) do
          local seen = false
          for _, s in ipairs(ev.sources) do if s == id then seen = true break end end
          if not seen then ev.sources[#ev.sources + 1] = id end
        end
        return
      end
    end
    arrive(P, { ev = { kind = OUTDATED, from = "{|}", sources = d } })
  elseif kind == EV_MESSAGE then
    if c == 1 and P[NPEND] == 0 then
      -- the common case: one payload for a plain listen channel, no message object
      local l = P[LISTEN]
      l = l and l[a]
      if l and l[C_FLAGS] & F_PLAIN ~= 0 then
        local q = l[C_RQ]
        if q and q[Q_H] <= q[Q_T] then
          local h = q[Q_H]
          local w = q[h]
          if not w[SEL] and w[SV] == nil then
            -- a task waits in receive: hand it the value
            q[h] = nil
            if h == q[Q_T] then q[Q_H], q[Q_T] = 3, 2 else q[Q_H] = h + 1 end
            wake(P, w, d, true)
            return
          end
        end
        if offer_value(P, l, d) then return end
      end
    end
    arrive(P, setmetatable({ tp = a, fr = b, n = c, d, ... }, MsgMT))
  elseif kind == EV_COMPLETION then
    local cmds = rare_get(P, "cmds")
    local h = cmds and cmds[a]
    if h then h(P, a, b, c) end
  elseif kind == EV_EXIT then
    local execs = rare_get(P, "execs")
    local w = execs and execs[a]
    if w ~= nil then
      execs[a] = nil
      local calls = rare_get(P, "calls")
      if calls then calls[a] = nil end
      -- a call abandoned when its caller was canceled: its exit is nobody's event
      if w == false then return end
      if w.future then
        on_future(P, w, c, d)
      elseif c then
        wake(P, w, d)
      else
        wake(P, w, nil, d)
      end
      return
    end
    local result = c and { value = d } or { error = d }
    arrive(P, { ev = { kind = EXIT, from = a, at = b, result = result } })
  elseif kind == EV_LINK_DOWN then
    arrive(P, { ev = { kind = LINK_DOWN, from = a, at = b, result = { error = c } } })
  elseif kind == EV_CANCEL then
    local execs = rare_get(P, "execs")
    if execs and next(execs) then cancel_calls(P, execs) end
    arrive(P, { ev = { kind = CANCEL, from = a, at = b, reason = c } })
  end
end

local function counted(ok, ...) return ok, select("#", ...), ... end

local DEADLOCK = "deadlock: every coroutine of the process is blocked on a channel that nothing can wake"

-- The scheduling loop, on main's coroutine while main waits: run the other tasks; return
-- main's wake values once main is woken; wait for runtime events when nothing is ready.
-- A spawned task's error ends the process ("exit" to Rust, never resumed again).
sched = function(P)
  local co = P[CO]
  while true do
    local t = P[RH]
    if t then
      local nx = t[QN]
      P[RH] = nx
      if not nx then P[RT] = false end
      t[QN] = false
      local a, b = t[A], t[B]
      t[A], t[B] = nil, nil
      if t == P then return a, b end
      -- S[2] = t and R.cur(tco) happen inside the resume (R.resume_task): set from here,
      -- the hook could suspend main between them and the resume, and the runtime resumes
      -- main with S[2] reset
      local tco = t[CO]
      local ok, n, r1
      local args = t[ARGS]
      if args then
        t[ARGS] = false
        ok, n, r1 = counted(resume_task(S, t, tco, unpack(args, 1, args.n)))
      else
        -- (a task the hook suspended ignores what it is resumed with)
        ok, n, r1 = counted(resume_task(S, t, tco, a, b))
      end
      S[2] = false
      rt_cur(co)
      if not ok then
        if r1 == MEMERR then rt_memfail() end
        raw_yield("exit", false, r1)
      elseif r1 == BLOCK or r1 == DONE then
        -- waiting (a waker puts it back), or finished
      elseif n == 0 and rt_preempted() then
        -- suspended by the hook: it goes on first, after the runtime's turn
        t[QN] = P[RH]
        P[RH] = t
        rt_dirty()
        if not P[RT] then P[RT] = t end
        raw_yield()
      else
        -- a plain coroutine.yield() at a task's top level: let the others run
        wake(P, t)
      end
    else
      S[2] = false
      if P[NEXT] == 0 then
        raw_yield("exit", false, rt_error("Internal", DEADLOCK))
      end
      handle(P, raw_yield(WAIT))
    end
  end
end

local function task_body(f, ...)
  f(...)
  local P = S[1]
  local x = P[X]
  if x and x.linger then
    -- an HTTP handler's task: main may be waiting for the last one (linger, below)
    x.ntasks = x.ntasks - 1
    if x.ntasks == 0 and x.lingering then wake(P, P) end
  end
  return DONE
end

local function new_task(P, f, ...)
  -- CO, SEL, EXT, ARGS, A, B, SV, QN
  local t = { raw_create(task_body), false, false, pack(f, ...), nil, nil, nil, false }
  local x = P[X]
  if x and x.linger then x.ntasks = (x.ntasks or 0) + 1 end
  wake(P, t)
  return t
end

-- An HTTP handler's main returned (SPEC 11.2): its response goes now (R.main_done) and
-- the process lives on until the tasks it spawned finish; then main's values end it.
local function linger(P, ...)
  local x = P[X]
  -- (an HTTP handler's returned value, when it wrote nothing: its JSON answer, written as
  -- json.encode writes, SPEC 11.2; what the encoder declines the runtime answers)
  local v, e = ...
  if v ~= nil and (e == nil or e == true or e == false) then R.http_return(v) end
  if (x.ntasks or 0) > 0 and R.main_done(...) then
    x.lingering = true
    block()
  end
  return ...
end

-- The body of a process's coroutine: resolve the entry's main from its chunk's result
-- and call it, as a tail call (this frame and its arguments leave the coroutine's stack;
-- a parked process's stack then stays within Lua's first allocation). Rust reads main's
-- `return v, err` (a string or an error object as err is an abnormal exit).
local function main_body(P, chunk, env, method, id, ...)
  local r
  -- (no more locals here: one more measured ~350 more bytes of Lua heap per parked
  -- process in lua-heap, the coroutine's stack growing past its first allocation)
  local upgraded = P[X] and P[X].upgraded
  if upgraded then
    local ok, res = pcall(chunk, env)
    if not ok then error(rt_error("Internal", "upgrade: " .. tostring(res)), 0) end
    r = res
  else
    r = chunk(env)
  end
  local f
  if type(r) == "table" then
    f = r[method]
  elseif type(r) == "function" and method == "main" then
    f = r
  end
  if type(f) ~= "function" then
    local why = "entry '" .. id .. "' has no function '" .. method .. "' (its chunk must return a table with it, or a function)"
    error(rt_error("Invalid", (upgraded and "upgrade: " or "") .. why), 0)
  end
  if P[X] and P[X].linger then return linger(P, f(...)) end
  return f(...)
end

-------------------------------------------------------------------------------------------
-- coroutine: wrappers that pass runtime waits (blocking calls, preemption) up through
-- user coroutines and resume the inner coroutine with the answer.
-------------------------------------------------------------------------------------------
local function pass_up(co, ok, ...)
  if ok then
    local first = ...
    if first == BLOCK then
      rt_cur(raw_running())
      local a, b = block()
      rt_cur(co)
      return pass_up(co, raw_resume(co, a, b))
    elseif select("#", ...) == 0 and raw_status(co) ~= "dead" and R.preempt_pending() then
      rt_cur(raw_running())
      raw_yield()
      rt_cur(co)
      return pass_up(co, raw_resume(co))
    end
  end
  rt_cur(raw_running())
  return ok, ...
end

local co_lib = {}
for k, v in pairs(coroutine) do co_lib[k] = v end
-- The coroutines of spawned tasks: handles only, never resumed by hand (SPEC 12.5).
local TASK_CO = setmetatable({}, { __mode = "k" })
co_lib.resume = function(co, ...)
  if type(co) ~= "thread" then
    error("bad argument #1 to 'resume' (coroutine expected, got " .. type(co) .. ")", 2)
  end
  if TASK_CO[co] then
    return false, "cannot resume a spawned task"
  end
  rt_cur(co)
  return pass_up(co, raw_resume(co, ...))
end
local function wrap_result(ok, ...)
  if not ok then error((...), 0) end
  return ...
end
co_lib.wrap = function(f)
  if type(f) ~= "function" then
    error("bad argument #1 to 'wrap' (function expected, got " .. type(f) .. ")", 2)
  end
  local co = raw_create(f)
  return function(...)
    rt_cur(co)
    return wrap_result(pass_up(co, raw_resume(co, ...)))
  end
end
co_lib.yield = function(...)
  local P = S[1]
  if raw_running() == P[CO] then
    -- main yields at its top level: let the other tasks have a turn
    wake(P, P)
    sched(P)
    return
  end
  return raw_yield(...)
end
co_lib.spawn = function(f, ...)
  if type(f) ~= "function" then
    error("bad argument #1 to 'spawn' (function expected, got " .. type(f) .. ")", 2)
  end
  -- no arguments reach f (SPEC 12.5: use a closure); the result is the task's coroutine,
  -- a handle only
  local t = new_task(S[1], f)
  TASK_CO[t[1]] = true
  return t[1]
end
LIBS.coroutine = co_lib

-------------------------------------------------------------------------------------------
-- process (the Lua side; the rest are Rust functions already in LIBS.process)
-------------------------------------------------------------------------------------------
local process = LIBS.process
do
  -- one C function each: the raw send and spawn, falling back to the full (mlua) ones
  process.send = R.make_send(process.send, rt_error)
  process.spawn = R.make_spawn(process.spawn, rt_error)
end
process.event = { EXIT = EXIT, LINK_DOWN = LINK_DOWN, CANCEL = CANCEL, OUTDATED = OUTDATED }

-- A table of the process's rarer parts (in P[X]), made on first use.
local function part(P, key)
  local x = rare(P)
  local t = x[key]
  if not t then t = {}; x[key] = t end
  return t
end

-- The process's inbox and events channels (made on first call; the same ever after). The
-- inbox is made by Rust (vm/raw.rs inbox: no third call frame on main's coroutine).
process.inbox = R.make_inbox(S, ChanMT, HandleMT, drain_all)
function process.events()
  local P = S[1]
  local x = rare(P)
  local ch = x.events
  if not ch then
    ch = newchan(P, 0, true); x.events = ch
    if P[NPEND] > 0 then drain_all(P) end
  end
  return ch[C_H]
end

function process.listen(topic, opts)
  if type(topic) ~= "string" then
    error("bad argument #1 to 'listen' (string expected, got " .. type(topic) .. ")", 2)
  end
  if opts ~= nil and type(opts) ~= "table" then
    error("bad argument #2 to 'listen' (table expected, got " .. type(opts) .. ")", 2)
  end
  if topic:sub(1, 1) == "@" then
    return nil, rt_error("Invalid", "topic '" .. topic .. "' is reserved: topics starting with '@' belong to the runtime")
  end
  local P = S[1]
  local l = P[LISTEN]
  if not l then l = {}; P[LISTEN] = l end
  local ch = l[topic]
  if ch then return ch[C_H] end
  ch = newchan(P, 1, true, topic, not (opts and opts.message))
  l[topic] = ch
  if P[NPEND] > 0 then drain_all(P) end
  return ch[C_H]
end

function process.unlisten(h)
  local ch = check_chan(h, "unlisten")
  local P = S[1]
  local topic = ch[C_TOPIC]
  if topic and P[LISTEN] and P[LISTEN][topic] == ch then
    P[LISTEN][topic] = nil
    close(ch)
    if P[NPEND] > 0 then drain_all(P) end
    return true
  end
  return false
end

local function execs(P) return part(P, "execs") end
local function cmds(P) return part(P, "cmds") end

-- Wait for a command a module started in Rust (a timer, an HTTP body, a client request):
-- the completion wakes the task with its value, or nil and the error.
local function await_cmd(id)
  local P = S[1]
  local t = S[2] or P
  cmds(P)[id] = function(P2, i, ok, v)
    P2[X].cmds[i] = nil
    if ok then wake(P2, t, v) else wake(P2, t, nil, v) end
  end
  t[EXT] = true; P[NEXT] = P[NEXT] + 1
  return block()
end

-- A cluster-wide name is answered by the cluster: Rust starts that as a command ("wait",
-- id) and the caller waits here, as for a timer, instead of holding its worker for the
-- round trip. Any other answer is passed on; a failed wait answers `failed, err`.
local function settled(failed, ok, x)
  if ok ~= "wait" then return ok, x end
  local _, err = await_cmd(x)
  if err then return failed, err end
  return true
end
do
  local reg = process.registry
  local raw_register = reg.register
  function reg.register(name, pid, scope) return settled(nil, raw_register(name, pid, scope)) end
end
if LIBS.system and LIBS.system.lock then
  local lock = LIBS.system.lock
  local raw_acquire = lock.acquire
  function lock.acquire(name) return settled(false, raw_acquire(name)) end
end

-- A stream's next chunk, once `read` (a Rust half) started it as command `id` (or said
-- why not): nil at the end, when the stream's handle `st[key]` is let go of.
local function next_chunk(st, key, id, err)
  if not id then return nil, err end
  local chunk, e = await_cmd(id)
  if chunk == nil then st[key] = nil end
  return chunk, e
end

-- What every read-only stream has besides read and close (Wippy's stream object): stat,
-- scanner(split) over read, and write/flush/seek refused as a read-only stream refuses them.
-- `T.read(st, n)` is the stream's own; the wrapper checks n for it and counts the bytes it
-- gives for stat's position.
local Scanner = {}
local ScannerMT = { __index = Scanner, __name = "scanner", __metatable = "scanner" }
-- each split: the next token in buf from i, and where the rest starts; nil when it needs
-- more input (or, at the end, when there is none)
local SPLITS = {
  lines = function(buf, i, eof)
    local j = buf:find("\n", i, true)
    if j then return (buf:sub(i, j - 1):gsub("\r$", "")), j + 1 end
    if eof and i <= #buf then return (buf:sub(i):gsub("\r$", "")), #buf + 1 end
  end,
  words = function(buf, i, eof)
    local s, e = buf:find("%S+", i)
    if s and (e < #buf or eof) then return buf:sub(s, e), e + 1 end
  end,
  bytes = function(buf, i)
    if i <= #buf then return buf:sub(i, i), i + 1 end
  end,
  runes = function(buf, i, eof)
    local b = buf:byte(i)
    if not b then return nil end
    local len = b < 0x80 and 1 or b >= 0xF0 and 4 or b >= 0xE0 and 3 or b >= 0xC0 and 2 or 1
    if i + len - 1 <= #buf or eof then return buf:sub(i, i + len - 1), i + len end
  end,
}
function Scanner.scan(sc)
  while true do
    local tok, nxt = sc.split(sc.buf, sc.i, sc.eof)
    if tok then sc.tok, sc.i = tok, nxt; return true end
    if sc.eof then sc.tok = nil; return false end
    local chunk, err = sc.st:read(32768)
    if err then sc.e = err; sc.tok = nil; return false, err end
    if chunk == nil then
      sc.eof = true
    else
      sc.buf, sc.i = sc.buf:sub(sc.i) .. chunk, 1
    end
  end
end
function Scanner.text(sc) return sc.tok or "" end
function Scanner.err(sc) return sc.e and tostring(sc.e) or nil end
local function stream_extras(T, size_of)
  local read = T.read
  T.read = function(st, n)
    if n ~= nil and type(n) ~= "number" then
      error("bad argument #1 to 'read' (number expected, got " .. type(n) .. ")", 2)
    end
    local c, e = read(st, n)
    if c then st.pos = (st.pos or 0) + #c end
    return c, e
  end
  function T.stat(st)
    local open = T.open(st)
    return { size = size_of and size_of(st) or -1, position = st.pos or 0, readable = open, writable = false, seekable = false }
  end
  function T.scanner(st, split)
    local f = SPLITS[split or "lines"]
    if not f then return nil, rt_error("Invalid", "unknown split type: " .. tostring(split)) end
    return setmetatable({ st = st, split = f, buf = "", i = 1, eof = false }, ScannerMT)
  end
  function T.write() return nil, rt_error("Internal", "stream is not writable") end
  function T.flush() return nil, rt_error("Internal", "stream is not writable") end
  function T.seek(_, whence)
    if whence ~= "set" and whence ~= "cur" and whence ~= "end" then
      return nil, rt_error("Invalid", "invalid whence: " .. tostring(whence))
    end
    return nil, rt_error("Internal", "stream is not seekable")
  end
end

local function wait_exit(P, pid)
  local t = S[2] or P
  execs(P)[pid] = t
  t[EXT] = true; P[NEXT] = P[NEXT] + 1
  return block()
end

-- a function call's wait (funcs.call): one the caller's cancellation ends
local function wait_call(P, pid)
  part(P, "calls")[pid] = true
  return wait_exit(P, pid)
end

local spawn_raw = R.spawn

-- Spawners: process.with_context(values) and friends.
local Spawner = {}
local SpawnerMT = { __index = Spawner, __name = "spawner", __metatable = "spawner" }
local function spawner_copy(sp)
  local n = setmetatable({ ctx = sp.ctx, name = sp.name, msgs = sp.msgs, sec = sp.sec, opts = sp.opts }, SpawnerMT)
  return n
end
-- with_options (SPEC 12.5): options merged into the spawner's, for the target host (this
-- runtime's hosts interpret none of them); `network` needs network.select, the call itself
-- process.context. Denials raise.
local rt_can = R.can
local function with_options(sp, opts, level)
  if type(opts) ~= "table" then
    error("bad argument #1 to 'with_options' (table expected, got " .. type(opts) .. ")", level)
  end
  for k in pairs(opts) do
    if type(k) ~= "string" then
      error("bad argument #1 to 'with_options' (options keys must be strings)", level)
    end
  end
  if not rt_can("process.context", "context") then
    error("not allowed to spawn processes with custom options", level)
  end
  if opts.network ~= nil and not rt_can("network.select", tostring(opts.network)) then
    error("not allowed: network " .. tostring(opts.network), level)
  end
  local n = spawner_copy(sp)
  local merged = {}
  if sp.opts then for k, v in pairs(sp.opts) do merged[k] = v end end
  for k, v in pairs(opts) do merged[k] = v end
  n.opts = merged
  return n
end
function Spawner.with_options(sp, opts) return with_options(sp, opts, 3) end
function Spawner.with_context(sp, values)
  if type(values) ~= "table" then
    error("bad argument #1 to 'with_context' (table expected, got " .. type(values) .. ")", 2)
  end
  local n = spawner_copy(sp)
  local ctx = {}
  if sp.ctx then for k, v in pairs(sp.ctx) do ctx[k] = v end end
  for k, v in pairs(values) do ctx[k] = v end
  n.ctx = ctx
  return n
end
-- with_actor/with_scope: the child runs as this actor / under this scope (the runtime
-- checks `process.security` at spawn).
local function with_sec(sp, key, v, fname)
  if type(v) ~= "userdata" then
    error("bad argument #1 to '" .. fname .. "' (" .. key .. " expected, got " .. type(v) .. ")", 3)
  end
  local n = spawner_copy(sp)
  n.sec = { actor = sp.sec and sp.sec.actor, scope = sp.sec and sp.sec.scope }
  n.sec[key] = v
  return n
end
function Spawner.with_actor(sp, actor) return with_sec(sp, "actor", actor, "with_actor") end
function Spawner.with_scope(sp, scope) return with_sec(sp, "scope", scope, "with_scope") end
function Spawner.with_name(sp, name)
  if type(name) ~= "string" then
    error("bad argument #1 to 'with_name' (string expected, got " .. type(name) .. ")", 2)
  end
  local n = spawner_copy(sp); n.name = name; return n
end
function Spawner.with_message(sp, topic, ...)
  if type(topic) ~= "string" then
    error("bad argument #1 to 'with_message' (string expected, got " .. type(topic) .. ")", 2)
  end
  local n = spawner_copy(sp)
  local msgs = {}
  if sp.msgs then for i, m in ipairs(sp.msgs) do msgs[i] = m end end
  msgs[#msgs + 1] = pack(topic, ...)
  n.msgs = msgs
  return n
end
-- R.spawn's first argument (vm/abi.rs): bits of a spawn, or one of the two whole modes
local SPAWN_MONITORED <const> = 1
local SPAWN_LINKED <const> = 2
local SPAWN_EXEC <const> = 4     -- process.exec
local SPAWN_FUNCTION <const> = 5 -- a function call (funcs.call, async)
local function spawner_spawn(sp, mode, entry, host, ...)
  local pid, err = spawn_raw(mode, entry, host, sp.ctx, sp.name, sp.sec, ...)
  if not pid then return nil, err end
  if sp.msgs then
    for _, m in ipairs(sp.msgs) do
      local ok, serr = process.send(pid, unpack(m, 1, m.n))
      if not ok then return nil, serr end
    end
  end
  return pid
end
function Spawner.spawn(sp, ...) return spawner_spawn(sp, 0, ...) end
function Spawner.spawn_monitored(sp, ...) return spawner_spawn(sp, SPAWN_MONITORED, ...) end
function Spawner.spawn_linked(sp, ...) return spawner_spawn(sp, SPAWN_LINKED, ...) end
function Spawner.spawn_linked_monitored(sp, ...) return spawner_spawn(sp, SPAWN_LINKED | SPAWN_MONITORED, ...) end
function Spawner.exec(sp, entry, host, ...)
  local pid, err = spawner_spawn(sp, SPAWN_EXEC, entry, host, ...)
  if not pid then return nil, err end
  return wait_exit(S[1], pid)
end
-- process.exec is a spawner's exec with nothing set
local PLAIN = setmetatable({}, SpawnerMT)
function process.exec(...) return Spawner.exec(PLAIN, ...) end

function process.with_context(values)
  return Spawner.with_context(setmetatable({}, SpawnerMT), values)
end
function process.with_actor(actor) return with_sec(setmetatable({}, SpawnerMT), "actor", actor, "with_actor") end
function process.with_options(opts) return with_options(setmetatable({}, SpawnerMT), opts, 3) end
function process.with_scope(scope) return with_sec(setmetatable({}, SpawnerMT), "scope", scope, "with_scope") end

-------------------------------------------------------------------------------------------
-- time: the waiting parts (sleep, after, timer, ticker); the rest is Rust (LIBS.time)
-------------------------------------------------------------------------------------------
local time = LIBS.time
local to_ns, cmd_after, cmd_ticker, cmd_cancel = R.duration_ns, R.after, R.ticker, R.cancel_command

function time.sleep(d)
  await_cmd(cmd_after(to_ns(d, "sleep")))
end

local function timer_channel(P, ns, once_close)
  local ch = newchan(P, 1, true)
  local id = cmd_after(ns)
  cmds(P)[id] = function(P2, i, ok, v)
    P2[X].cmds[i] = nil
    offer_value(P2, ch, rt_time(v))
    if once_close then close(ch) end
  end
  return ch, id
end

-- a timer, an after or a ticker of a duration <= 0 is refused with Invalid (SPEC 12.3)
local function positive(ns, what)
  if ns > 0 then return nil end
  return rt_error("Invalid", what .. " duration must be positive")
end

function time.after(d)
  local ns = to_ns(d, "after")
  local bad = positive(ns, "after")
  if bad then return nil, bad end
  local ch = timer_channel(S[1], ns, true)
  return ch[C_H]
end

local Timer = {}
local TimerMT = { __index = Timer, __name = "timer", __metatable = "timer" }
function time.timer(d)
  local P = S[1]
  local ns = to_ns(d, "timer")
  local bad = positive(ns, "timer")
  if bad then return nil, bad end
  local ch, id = timer_channel(P, ns, false)
  return setmetatable({ ch = ch[C_H], id = id, fired = false }, TimerMT)
end
function Timer.channel(tm) return tm.ch end
Timer.response = Timer.channel
-- (a timer is used only by the process that made it: it cannot be sent, so the running
-- process is its owner, and the object holds nothing of the runtime's state)
-- cancel the pending command of a timer or ticker `o`: whether it was still pending
local function stop_cmd(o)
  local cmds = rare_get(S[1], "cmds")
  if o.id and cmds and cmds[o.id] then
    cmds[o.id] = nil
    cmd_cancel(o.id)
    o.id = nil
    return true
  end
  return false
end
Timer.stop = stop_cmd
function Timer.reset(tm, d)
  local ns = to_ns(d, "reset")
  if ns <= 0 then error("bad argument #1 to 'reset' (duration must be positive)", 2) end
  local was = Timer.stop(tm)
  local P = S[1]
  local ch = check_chan(tm.ch, "reset")
  local id = cmd_after(ns)
  cmds(P)[id] = function(P2, i, ok, v) P2[X].cmds[i] = nil; offer_value(P2, ch, rt_time(v)) end
  tm.id = id
  return was
end

local Ticker = {}
local TickerMT = { __index = Ticker, __name = "ticker", __metatable = "ticker" }
function time.ticker(d)
  local ns = to_ns(d, "ticker")
  local bad = positive(ns, "ticker")
  if bad then return nil, bad end
  local P = S[1]
  local ch = newchan(P, 1, true)
  local id = cmd_ticker(ns)
  -- a slow reader loses ticks: a tick that finds the buffer full is dropped
  cmds(P)[id] = function(P2, i, ok, v) offer_value(P2, ch, rt_time(v)) end
  return setmetatable({ ch = ch[C_H], id = id }, TickerMT)
end
function Ticker.channel(tk) return tk.ch end
Ticker.response = Ticker.channel
function Ticker.stop(tk)
  if not stop_cmd(tk) then return false end
  close(chan_of(tk.ch))
  return true
end

-------------------------------------------------------------------------------------------
-- process.upgrade: replace this process's Lua state with a fresh one of an entry (SPEC 4.8)
-------------------------------------------------------------------------------------------
-- What the old state had received but not yet taken goes to the new one, oldest first:
-- values waiting in listen channels' buffers, then the pending mailbox items. The old
-- code's timers stop. Rust builds the new state and calls its main; this never returns.
function process.upgrade(entry, ...)
  if entry ~= nil and type(entry) ~= "string" then
    error("bad argument #1 to 'upgrade' (string or nil expected, got " .. type(entry) .. ")", 2)
  end
  local P = S[1]
  if raw_running() ~= P[CO] or S[2] then
    error("process.upgrade must be called from the process's main function", 2)
  end
  local carry, n = {}, 0
  if P[LISTEN] then
    for topic, ch in pairs(P[LISTEN]) do
      while ch[C_N] > 0 do
        local ok, v = try_recv(ch)
        if not ok then break end
        n = n + 1
        if ch[C_FLAGS] & F_PLAIN ~= 0 then
          carry[n] = setmetatable({ tp = topic, fr = "", n = 1, v }, MsgMT)
        else
          carry[n] = v
        end
      end
    end
  end
  if P[NPEND] > 0 then
    local x = P[X]
    local h = x.ph or 1
    for i = h, h + P[NPEND] - 1 do n = n + 1; carry[n] = x.pending[i] end
  end
  P[NPEND] = 0
  local cmds = rare_get(P, "cmds")
  if cmds then
    for id in pairs(cmds) do cmd_cancel(id) end
  end
  return raw_yield("exit", "upgrade", entry, carry, n, pack(...))
end

-------------------------------------------------------------------------------------------
-- events: subscriptions to the system event bus (SPEC 12.7); each one a listen channel on
-- its private topic, so events queue in the mailbox and work with select
-------------------------------------------------------------------------------------------
if LIBS.events then
  local events = LIBS.events
  local Subscription = {}
  local SubscriptionMT = { __index = Subscription, __name = "subscription", __metatable = "subscription" }
  local subscribe, unsubscribe = R.events_subscribe, R.events_unsubscribe
  function events.subscribe(system, kind)
    local id, topic, err = subscribe(system, kind)
    if not id then return nil, err end
    return setmetatable({ id = id, ch = process.listen(topic) }, SubscriptionMT), nil
  end
  function Subscription.channel(sub) return sub.ch end
  function Subscription.close(sub)
    if sub.id then
      unsubscribe(sub.id)
      sub.id = nil
      process.unlisten(sub.ch)
    end
    return true
  end
end

-------------------------------------------------------------------------------------------
-- http (SPEC 11.3): the request/response objects are Rust's; these are their methods that
-- wait (found through the objects' __index)
-------------------------------------------------------------------------------------------
if LIBS.http then
  -- req:stream(): read(n) waits for the next piece of the body (nil at its end)
  local BodyStream = {}
  local BodyStreamMT = { __index = BodyStream, __name = "stream", __metatable = "stream" }
  function BodyStream.read(st, n)
    if not st.h then return nil end
    return next_chunk(st, "h", st.h:_read(math.floor(n or 65536)))
  end
  function BodyStream.close(st)
    if st.h then st.h:close(); st.h = nil end
    return true
  end
  function BodyStream.open(st) return st.h ~= nil end
  stream_extras(BodyStream)
  -- a multipart file part (SPEC 11.3): held in memory; stream() reads it like a body
  local File = {}
  local FileMT = { __index = File, __name = "file", __metatable = "file" }
  local MemStream = {}
  local MemStreamMT = { __index = MemStream, __name = "stream", __metatable = "stream" }
  function File.name(f) return f.n end
  function File.size(f) return f.s end
  function File.header(f, name)
    if type(name) ~= "string" then return nil end
    local want = name:lower()
    for k, v in pairs(f.h) do
      if k:lower() == want then return v end
    end
    return nil
  end
  function File.stream(f) return setmetatable({ d = f.d, at = 1, size = #f.d }, MemStreamMT) end
  function MemStream.read(st, n)
    local d = st.d
    if not d or st.at > #d then st.d = nil; return nil end
    local k = math.max(1, math.floor(n or 65536))
    local chunk = d:sub(st.at, st.at + k - 1)
    st.at = st.at + #chunk
    return chunk
  end
  function MemStream.close(st) st.d = nil; return true end
  function MemStream.open(st) return st.d ~= nil end
  stream_extras(MemStream, function(st) return st.size end)
  local function write_done(ok, x)
    if ok then return nil end
    if ok == false then
      local _, err = await_cmd(x)
      return err
    end
    return x
  end
  R.http_async {
    body = function(req)
      local id, err = req:_body(false)
      if not id then return nil, err end
      return await_cmd(id)
    end,
    body_json = function(req)
      local id, err = req:_body(true)
      if not id then return nil, err end
      return await_cmd(id)
    end,
    write = function(res, s) return write_done(res:_write(s)) end,
    write_json = function(res, v) return write_done(res:_write_json(v)) end,
    write_event = function(res, ev) return write_done(res:_write_event(ev)) end,
    stream = function(req)
      local h, err = req:_stream()
      if not h then return nil, err end
      return setmetatable({ h = h }, BodyStreamMT)
    end,
    parse_multipart = function(req, max_memory)
      if max_memory ~= nil and type(max_memory) ~= "number" then
        error("bad argument #1 to 'parse_multipart' (number expected, got " .. type(max_memory) .. ")", 2)
      end
      local id, err = req:_multipart(max_memory and math.floor(max_memory))
      if not id then return nil, err end
      local form, e = await_cmd(id)
      if not form then return nil, e end
      for _, list in pairs(form.files) do
        for i, f in ipairs(list) do
          list[i] = setmetatable({ n = f.name, s = f.size, h = f.headers, d = f.data }, FileMT)
        end
      end
      return form, nil
    end,
  }
end

-- exec: lua/exec.lua, compiled on first use in a VM
LAZY.exec = function()
  R.load_lazy("exec", { env = _ENV, R = R, LIBS = LIBS, rt_error = rt_error, await_cmd = await_cmd })
end
-- sql.builder: lua/sql_builder.lua, compiled when a process of the VM first binds sql
LAZY.sql = function()
  R.build_lib("sql")
  LIBS.sql.builder = R.sql_builder(_ENV, LIBS.sql)
end


-------------------------------------------------------------------------------------------
-- http_client (SPEC 11.5): every request is a command; a batch waits for all of its own
-------------------------------------------------------------------------------------------
if LIBS.http_client then
  local hc = LIBS.http_client
  local start, read, close = R.http_client_start, R.http_client_read, R.http_client_close
  local Stream = {}
  local StreamMT = { __index = Stream, __name = "stream", __metatable = "stream" }
  -- read(n): up to n bytes (what is left of the last piece first, then the next piece);
  -- no n: the next piece whole; nil at the end
  function Stream.read(st, n)
    local buf = st.buf
    if buf == nil then
      if not st.id then return nil end
      local chunk, e = next_chunk(st, "id", read(st.id))
      if chunk == nil then return nil, e end
      buf = chunk
    end
    n = n and math.floor(n) or 0
    if n > 0 and #buf > n then
      st.buf = buf:sub(n + 1)
      return buf:sub(1, n)
    end
    st.buf = nil
    return buf
  end
  function Stream.close(st)
    if st.id then close(st.id); st.id = nil end
    st.buf = nil
    return true
  end
  function Stream.open(st) return st.id ~= nil or st.buf ~= nil end
  stream_extras(Stream)
  local function wrap(resp)
    if type(resp) == "table" and resp.stream_id then
      resp.stream = setmetatable({ id = resp.stream_id }, StreamMT)
      resp.stream_id = nil
    end
    return resp
  end
  -- a file part given as a `reader` (anything with read(n) -> chunk or nil at the end: a
  -- response stream, a request body stream) is read to its end here, in the calling
  -- process (a read may wait), and sent as its content; the caller's tables stay as they are
  local function with_readers(opts)
    if type(opts) ~= "table" or type(opts.files) ~= "table" then return opts end
    local copy, files
    for i, f in ipairs(opts.files) do
      if type(f) == "table" and f.content == nil and f.reader ~= nil then
        local rd = f.reader
        local ok, read_fn = pcall(function() return rd.read end)
        if not ok or type(read_fn) ~= "function" then
          return nil, rt_error("Invalid", "files[" .. i .. "]: reader must have a read method, got " .. type(rd))
        end
        if not copy then
          copy, files = {}, {}
          for k, v in pairs(opts) do copy[k] = v end
          for j, g in ipairs(opts.files) do files[j] = g end
          copy.files = files
        end
        local parts, n = {}, 0
        while true do
          local chunk, err = read_fn(rd, 65536)
          if chunk == nil or chunk == "" then
            if err then return nil, err end
            break
          end
          n = n + 1; parts[n] = chunk
        end
        local g = {}
        for k, v in pairs(f) do g[k] = v end
        g.reader, g.content = nil, table.concat(parts)
        files[i] = g
      end
    end
    return copy or opts
  end
  function hc.request(method, url, opts)
    if type(method) ~= "string" then
      error("bad argument #1 to 'request' (string expected, got " .. type(method) .. ")", 2)
    end
    local rerr
    opts, rerr = with_readers(opts)
    if rerr then return nil, rerr end
    local id, err = start(method, url, opts, false)
    if not id then return nil, err end
    local resp, e = await_cmd(id)
    if resp == nil then return nil, e end
    return wrap(resp), nil
  end
  for _, m in ipairs({ "get", "post", "put", "delete", "head", "patch" }) do
    local M = m:upper()
    hc[m] = function(url, opts) return hc.request(M, url, opts) end
  end
  function hc.request_batch(reqs)
    if type(reqs) ~= "table" then
      error("bad argument #1 to 'request_batch' (table expected, got " .. type(reqs) .. ")", 2)
    end
    local P = S[1]
    local t = S[2] or P
    local resps, errs, failed, left = {}, {}, false, 0
    local c = cmds(P)
    for i, r in ipairs(reqs) do
      local o, err = with_readers(r[3])
      local id
      if not err then id, err = start(r[1], r[2], o, true) end
      if not id then
        errs[i] = err; failed = true
      else
        left = left + 1
        c[id] = function(P2, k, ok, v)
          P2[X].cmds[k] = nil
          if ok then resps[i] = v else errs[i] = v; failed = true end
          left = left - 1
          if left == 0 then wake(P2, t) end
        end
      end
    end
    if left > 0 then
      t[EXT] = true; P[NEXT] = P[NEXT] + 1
      block()
    end
    if failed then return resps, errs end
    return resps, nil
  end
end

-------------------------------------------------------------------------------------------
-- funcs: call and async run a function.lua entry as a short-lived process
-------------------------------------------------------------------------------------------
if LIBS.funcs then
  local funcs = LIBS.funcs
  function funcs.call(id, ...)
    if type(id) ~= "string" then
      error("bad argument #1 to 'call' (string expected, got " .. type(id) .. ")", 2)
    end
    local pid, err = spawn_raw(SPAWN_FUNCTION, id, nil, nil, nil, nil, ...)
    if not pid then return nil, err end
    return wait_call(S[1], pid)
  end
  local Future = {}
  local FutureMT = { __index = Future, __name = "future", __metatable = "future" }
  local function async_with(ctx, sec, id, ...)
    local P = S[1]
    local pid, err = spawn_raw(SPAWN_FUNCTION, id, nil, ctx, nil, sec, ...)
    if not pid then return nil, err end
    local ch = newchan(P, 1, true)
    local f = setmetatable({ ch = ch[C_H], pid = pid }, FutureMT)
    -- the exit arrives as an EXIT event routed to this future's channel
    execs(P)[pid] = { future = f }
    return f
  end
  function funcs.async(id, ...)
    if type(id) ~= "string" then
      error("bad argument #1 to 'async' (string expected, got " .. type(id) .. ")", 2)
    end
    return async_with(nil, nil, id, ...)
  end

  -- Executors (SPEC 12.4.1): funcs.new() and its with_* copies; the caller's context and
  -- identity first, the executor's settings laid over them.
  local Executor = {}
  local ExecutorMT = { __index = Executor, __name = "executor", __metatable = "executor" }
  local function exec_copy(ex)
    return setmetatable({ ctx = ex.ctx, sec = ex.sec, opts = ex.opts }, ExecutorMT)
  end
  function funcs.new() return setmetatable({}, ExecutorMT) end
  function Executor.with_context(ex, values)
    if type(values) ~= "table" then
      error("bad argument #1 to 'with_context' (table expected, got " .. type(values) .. ")", 2)
    end
    if not rt_can("funcs.context", "context") then
      return nil, rt_error("PermissionDenied", "not allowed to set the context of function calls")
    end
    local n = exec_copy(ex)
    local ctx = {}
    if ex.ctx then for k, v in pairs(ex.ctx) do ctx[k] = v end end
    for k, v in pairs(values) do if type(k) == "string" then ctx[k] = v end end
    n.ctx = ctx
    return n
  end
  local function exec_sec(ex, key, v, fname, what)
    if v == nil then error(key .. " cannot be nil", 3) end
    if type(v) ~= "userdata" then error(what .. " expected", 3) end
    if not rt_can("funcs.security", "security") then
      return nil, rt_error("PermissionDenied", "not allowed to change the security of function calls")
    end
    local n = exec_copy(ex)
    n.sec = { actor = ex.sec and ex.sec.actor, scope = ex.sec and ex.sec.scope }
    n.sec[key] = v
    return n
  end
  function Executor.with_actor(ex, actor) return exec_sec(ex, "actor", actor, "with_actor", "Actor") end
  function Executor.with_scope(ex, scope) return exec_sec(ex, "scope", scope, "with_scope", "Scope") end
  function Executor.with_options(ex, opts)
    if type(opts) ~= "table" then
      error("bad argument #1 to 'with_options' (table expected, got " .. type(opts) .. ")", 2)
    end
    local bag = {}
    for k, v in pairs(opts) do if type(k) == "string" then bag[k] = v end end
    if bag.network ~= nil and not rt_can("network.select", tostring(bag.network)) then
      return nil, rt_error("PermissionDenied", "not allowed: network " .. tostring(bag.network))
    end
    local n = exec_copy(ex)
    n.opts = bag -- replaced, not merged
    return n
  end
  function Executor.call(ex, id, ...)
    if type(id) ~= "string" then
      error("bad argument #1 to 'call' (string expected, got " .. type(id) .. ")", 2)
    end
    local pid, err = spawn_raw(SPAWN_FUNCTION, id, nil, ex.ctx, nil, ex.sec, ...)
    if not pid then return nil, err end
    return wait_call(S[1], pid)
  end
  function Executor.async(ex, id, ...)
    if type(id) ~= "string" then
      error("bad argument #1 to 'async' (string expected, got " .. type(id) .. ")", 2)
    end
    return async_with(ex.ctx, ex.sec, id, ...)
  end
  -- What a future knows (its result, whether it was canceled), out of reach of the process
  -- that holds the future (SPEC 12.4.3).
  local FUT = setmetatable({}, { __mode = "k" })
  function Future.response(f) return f.ch end
  Future.channel = Future.response
  function Future.is_complete(f) local st = FUT[f] return st ~= nil and st.done == true end
  function Future.is_canceled(f) local st = FUT[f] return st ~= nil and st.canceled == true end
  -- never waits: nil, nil until the call has ended
  function Future.result(f)
    local st = FUT[f]
    if st and st.canceled then return nil, rt_error("Canceled", "canceled") end
    if not (st and st.done) then return nil, nil end
    if st.ok then return st.value, nil end
    return nil, st.err
  end
  function Future.error(f)
    local st = FUT[f]
    if st and st.done and not st.ok then
      return R.wrap_kind(st.err, "async call failed", "Internal"), true
    end
    return nil, false
  end
  function Future.cancel(f)
    local st = FUT[f] or {}
    FUT[f] = st
    st.canceled = true
    if not st.done then process.cancel(f.pid, "future canceled") end
    return true
  end
  on_future = (function(P, w, ok, v)
    local f = w.future
    local st = FUT[f] or {}
    FUT[f] = st
    st.done, st.ok = true, ok
    -- one value on the channel: the result as a Payload, or the error object itself. The
    -- channel stays open, as Wippy's does: a select over several futures' channels takes
    -- each one's value once and never a "closed" from one already taken (SPEC 12.4.3)
    if ok then st.value = newpayload(v) else st.err = v end
    offer_value(P, chan_of(f.ch), ok and st.value or v)
  end)

  -- contract: lua/contract.lua, compiled on first use in a VM (most projects never bind it)
  LAZY.contract = function()
    R.load_lazy("contract", { env = _ENV, R = R, LIBS = LIBS, rt_can = rt_can, rt_error = rt_error, time = time, ExecutorMT = ExecutorMT })
  end
end

-------------------------------------------------------------------------------------------
-- The per-process environment
-------------------------------------------------------------------------------------------
local BASE = LIBS._base
local ALWAYS = { process = true, channel = true, errors = true, payload = true, coroutine = true,
  string = true, table = true, math = true, utf8 = true, os = true,
  number = true, integer = true, boolean = true }

-------------------------------------------------------------------------------------------
-- Typed Lua at run time (the eraser in compile.rs leaves these calls behind)
-------------------------------------------------------------------------------------------
-- Casts: `string(x)`, `number(x)`, `integer(x)`, `boolean(x)` convert or raise;
-- `T:is(x)` gives `v, nil` or `nil, err`. The libraries hold only functions; each process
-- calls them through its own proxy, whose (protected) metatable carries __call.
local CAST_OF = {}
local function cannot(what, v)
  return rt_error("Invalid", "cannot convert " .. type(v) .. " to " .. what, false)
end
local CASTS = {
  string = function(v)
    local t = type(v)
    if t == "string" then return v elseif t == "number" then return tostring(v) end
    return nil, cannot("string", v)
  end,
  number = function(v)
    if type(v) == "number" then return v end
    local n = type(v) == "string" and tonumber(v)
    if n then return n end
    return nil, cannot("number", v)
  end,
  integer = function(v)
    local n = v
    if type(v) == "string" then n = tonumber(v) end
    local i = type(n) == "number" and math.tointeger(n)
    if i then return i end
    return nil, cannot("integer", v)
  end,
  boolean = function(v)
    if type(v) == "boolean" then return v elseif v == "true" then return true elseif v == "false" then return false end
    return nil, cannot("boolean", v)
  end,
}
for name, cast in pairs(CASTS) do
  local lib = LIBS[name]
  if lib == nil then lib = {}; LIBS[name] = lib end
  lib.is = function(_, v) return cast(v) end
  CAST_OF[lib] = function(_, v)
    local r, e = cast(v)
    if e ~= nil then error(e, 2) end
    return r
  end
end

-- Declared types: `type P = {x: number}` becomes `local P = __wippy_type("P", desc)`.
local TYPE_DESC = setmetatable({}, { __mode = "k" })
local function check(d, v, path)
  if d == "any" then return true end
  if type(d) == "string" then
    if (d == "integer" and math.type(v) == "integer") or type(v) == d then return true end
    return false, path .. ": " .. d .. " expected, got " .. (math.type(v) or type(v))
  end
  if d.opt ~= nil then
    if v == nil then return true end
    return check(d.opt, v, path)
  elseif d.lit ~= nil then
    if v == d.lit then return true end
    return false, path .. ": " .. tostring(d.lit) .. " expected, got " .. tostring(v)
  elseif d.union then
    for _, alt in ipairs(d.union) do
      if check(alt, v, path) then return true end
    end
    return false, path .. ": no alternative matches " .. type(v)
  elseif d.ref ~= nil then
    local inner = TYPE_DESC[d.ref]
    if inner == nil then return true end
    return check(inner, v, path)
  end
  if type(v) ~= "table" then return false, path .. ": table expected, got " .. type(v) end
  if d.array then
    for i, x in ipairs(v) do
      local ok, e = check(d.array, x, path .. "[" .. i .. "]")
      if not ok then return false, e end
    end
  elseif d.map then
    for k, x in pairs(v) do
      local ok, e = check(d.map[1], k, path .. " key")
      if not ok then return false, e end
      ok, e = check(d.map[2], x, path .. "[" .. tostring(k) .. "]")
      if not ok then return false, e end
    end
  elseif d.record then
    for _, f in ipairs(d.record) do
      local x = v[f[1]]
      if x == nil then
        if not f[3] then return false, path .. "." .. f[1] .. ": required field missing" end
      else
        local ok, e = check(f[2], x, path .. "." .. f[1])
        if not ok then return false, e end
      end
    end
  end
  return true
end
local TypeMethods = {}
function TypeMethods.is(T, v)
  local ok, e = check(TYPE_DESC[T], v, tostring(T))
  if ok then return v, nil end
  return nil, rt_error("Invalid", e, false)
end
local TypeMT = {
  __metatable = false,
  __index = TypeMethods,
  __call = function(T, v)
    local ok, e = check(TYPE_DESC[T], v, tostring(T))
    if not ok then error(rt_error("Invalid", e, false), 2) end
    return v
  end,
}
local TYPE_NAME = setmetatable({}, { __mode = "k" })
TypeMT.__tostring = function(T) return TYPE_NAME[T] or "type" end
function BASE.__wippy_type(name, desc)
  local T = setmetatable({}, TypeMT)
  TYPE_DESC[T], TYPE_NAME[T] = desc, name
  return T
end

-- A per-process proxy of a shared library: reads fall through to the library, writes stay
-- in the proxy; its metatable is protected. Libraries hold no tables (nested constant
-- tables such as process.event are read-only userdata), so nothing shared is writable.
local proxy_mts = setmetatable({}, { __mode = "k" })
local function proxy_mt(lib)
  local mt = proxy_mts[lib]
  if not mt then
    mt = { __metatable = false, __index = lib, __call = CAST_OF[lib] }
    proxy_mts[lib] = mt
  end
  return mt
end

local require_in -- forward: require, below

-- The process's own proxy of built-in library `k`, made on first use (nil when there is no
-- such library). One per process, whichever of its entries (main's, a library's) binds or
-- requires it: kept in the state's hash part under the library's name (P's slots are its
-- array part; a string key never moves them), so neither a global that code overwrites
-- nor a require in an imported library makes a second one. Main's environment starts
-- with its `process` one.
local PROXY_MT = {} -- library name -> proxy_mt of it, once the VM has built the library
local function own_proxy(P, k)
  local pr = P[k]
  if pr == nil then
    local mt = PROXY_MT[k]
    if mt == nil then
      local load = LAZY[k]
      if load then LAZY[k] = nil; load() end
      local lib = LIBS[k]
      if lib == nil then return nil end
      mt = proxy_mt(lib)
      PROXY_MT[k] = mt
    end
    -- (only `process` can be in the environment and not yet in P: new_process put it there)
    if k == "process" then pr = rawget(P[ENV], k) end
    if pr == nil or raw_meta(pr) ~= mt then pr = setmetatable({}, mt) end
    P[k] = pr
  end
  return pr
end

-- The environment metatable of one entry (shared by its processes): globals fall through
-- to the base library, then to the libraries the entry may bind, as per-process proxies.
local function env_mt(allowed, imports, brief)
  -- Globals of the entry's processes, shared by them and never reachable by them: the base
  -- functions, and for a library name the process's own proxy of it (made on first use
  -- and kept in the process's main environment, when the entry may bind it).
  local G = {}
  for k, v in pairs(BASE) do G[k] = v end
  setmetatable(G, { __index = function(_, k)
    if not (ALWAYS[k] or allowed[k]) then return nil end
    local P = S[1]
    local pr = own_proxy(P, k)
    if pr == nil then return nil end
    local env = P[ENV]
    if rawget(env, k) == nil and (ALWAYS[k] or raw_meta(env).allowed[k]) then rawset(env, k, pr) end
    return pr
  end })
  -- (what the entry may bind rides along, out of the processes' reach)
  -- (slot 1: a function entry's pool, where states of its finished calls wait for its next
  -- calls; made with its 16 slots, so that Rust's recycle, vm/coroutine.rs, never allocates)
  local mt = { brief and { nil, nil, nil, nil, nil, nil, nil, nil, nil, nil, nil, nil, nil, nil, nil, nil } or false,
    __metatable = false, __index = G, allowed = allowed, imports = imports }
  G.require = function(name) return require_in(mt, name) end
  return mt
end

local function new_env(P, mt)
  local env = setmetatable({}, mt)
  rawset(env, "_G", env)
  return env
end

-- require: built-in modules the entry lists, then its imports (library entries). Each
-- entry's environment has its own (env_mt binds it to the entry's metatable), so a library
-- requires its own imports and modules, not its importer's; results are cached per process
-- and entry.
function require_in(mt, name)
  local P = S[1]
  local v
  if ALWAYS[name] or mt.allowed[name] then
    -- a built-in library: the process's one proxy of it (no cache of its own to make: a
    -- handler process's first require is most of what it does); only strings are names
    -- there, so the type check below is for the other cases
    v = own_proxy(P, name)
  else
    if type(name) ~= "string" then
      error("bad argument #1 to 'require' (string expected, got " .. type(name) .. ")", 2)
    end
    local cache = part(P, "required")
    local mine = cache[mt]
    if mine == nil then mine = {}; cache[mt] = mine end
    v = mine[name]
    if v ~= nil then return v end
    local imports = mt.imports
    local lib = imports and imports[name]
    if lib then
      v = R.load_library(lib, new_env)
      mine[name] = v
    end
  end
  if v == nil then error("module '" .. name .. "' not found", 2) end
  return v
end
function BASE.require(name)
  return require_in(raw_meta(S[1][ENV]), name)
end

-- setmetatable never registers a finalizer: a __gc would run inside whichever process of
-- the shard is allocating when its object is collected, with that process's identity. As
-- in Wippy, __gc is simply never called; the metatable is set as given and keeps the field
-- (Lua marks an object for finalization only if __gc is present when it is set).
local raw_setmetatable = BASE.setmetatable
function BASE.setmetatable(t, mt)
  if type(mt) == "table" and type(t) == "table" then
    local gc = rawget(mt, "__gc")
    if gc ~= nil then
      rawset(mt, "__gc", nil)
      local ok, err = pcall(raw_setmetatable, t, mt)
      rawset(mt, "__gc", gc)
      if not ok then error(err, 2) end
      return t
    end
  end
  return raw_setmetatable(t, mt)
end

-- load: text chunks only; the environment defaults to the calling process's.
local raw_load = BASE.load
function BASE.load(chunk, name, mode, env)
  if mode ~= nil and mode ~= "t" then
    return nil, "attempt to load a binary chunk (only text chunks are allowed)"
  end
  if type(chunk) == "string" and chunk:byte(1) == 27 then
    return nil, "attempt to load a binary chunk (only text chunks are allowed)"
  end
  if env == nil then env = S[1][ENV] end
  return raw_load(chunk, name, "t", env)
end

-- pcall/xpcall must not swallow a memory-limit failure.
local norm_error = R.norm_error
local function pc_check(ok, ...)
  if not ok then
    local e = ...
    if e == MEMERR then
      rt_memfail()
      error(MEMERR, 0)
    end
    if type(e) == "userdata" then
      -- an error raised by a Rust function: the message, as Lua's own functions give it
      return false, norm_error(e), select(2, ...)
    end
  end
  return ok, ...
end
function BASE.pcall(f, ...) return pc_check(pcall(f, ...)) end
function BASE.xpcall(f, h, ...) return pc_check(xpcall(f, h, ...)) end

-- The constructor Rust calls for every new process: its state and its coroutine (`co`: a
-- finished process's coroutine Rust kept for reuse, with main_body pushed on it, or nil).
-- After an upgrade, `carry` holds the `ncarry` mailbox items the old state had not taken.
local process_mt
local function new_process(env_meta, carry, ncarry, co)
  co = co or raw_create(main_body)
  process_mt = process_mt or proxy_mt(LIBS.process)
  local x = carry and { upgraded = true, pending = carry } or false
  -- every process uses `process`: its proxy comes with the environment (one table of the
  -- right size, no lookup through the environment's __index on first use); `_G` exists,
  -- so setting it is a plain store. P has all 16 slots from the constructor: main's task
  -- (CO .. QN), then RH, RT, NEXT, NPEND, ENV, LISTEN, INBOX, X.
  local env, P
  local pool = env_meta[1] -- (a function entry's, false for others: env_mt)
  if pool then
    local n = #pool
    if n > 0 then
      -- a finished call's state of this same entry, as new_process made it (Rust's
      -- recycle took it only so, vm/coroutine.rs)
      P = pool[n]
      pool[n] = nil
      P[CO], P[NPEND], P[X] = co, ncarry or 0, x
      return P, co, P[ENV]
    end
    -- a function's process (an HTTP handler, a funcs.call) lives for one call, most of
    -- which is binding its modules: its state comes with room for two library proxies
    -- (own_proxy) in its hash part besides `process`, and its environment with room for
    -- two globals (a module bound by name, a global function), so that binding them does
    -- not rehash (`_ = nil` sizes a table and stores nothing). A long-lived process saves
    -- the bytes. Its `process` proxy is in P too (where own_proxy keeps proxies): recycle
    -- tells a global bound to a module from one the call set by that.
    local pr = setmetatable({}, process_mt)
    env = setmetatable({ _G = false, process = pr, _ = nil }, env_meta)
    P = { co, false, false, false, nil, nil, nil, false,
      false, false, 0, ncarry or 0, env, false, false, x, process = pr, _ = nil, __ = nil, ___ = nil }
  else
    env = setmetatable({ _G = false, process = setmetatable({}, process_mt) }, env_meta)
    P = { co, false, false, false, nil, nil, nil, false,
      false, false, 0, ncarry or 0, env, false, false, x }
  end
  env._G = env
  return P, co, env
end

return {
  always = ALWAYS,
  -- every lazily compiled library part now (lint reads what the libraries offer)
  load_lazy = function() for k, f in pairs(LAZY) do LAZY[k] = nil; f() end end,
  S = S,
  new_process = new_process,
  main_body = main_body,
  env_mt = env_mt,
  new_env = new_env,
  newchan = newchan,
}
