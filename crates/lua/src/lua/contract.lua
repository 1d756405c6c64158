-- contract (Wippy's en/lua/core/contract.md): contract.definition entries name methods,
-- contract.binding entries map them to function entries; an opened binding is an instance
-- whose methods are function calls (funcs' executor: context, identity, options). The
-- registry is read through R (no registry.get check: contract.* are the permissions).
-- Compiled on a VM's first use of the library (the prelude's LAZY), given what it needs.
local deps = ...
local _ENV = deps.env
local R, LIBS, rt_can, rt_error, time, ExecutorMT = deps.R, deps.LIBS, deps.rt_can, deps.rt_error, deps.time, deps.ExecutorMT
local contract = LIBS.contract
local entry_of, bindings_of = R.entry_of, R.bindings_of
local function full(ref, ns)
  if type(ref) ~= "string" then return nil end
  if ref:find(":", 1, true) then return ref end
  return ns .. ":" .. ref
end
local function ns_of(id) return (id:match("^([^:]*):")) or "" end
local function denied(action, resource)
  return rt_error("PermissionDenied", "not allowed: " .. action .. " " .. tostring(resource))
end
local function definition(id)
  local e = entry_of(id)
  if not e or e.kind ~= "contract.definition" then
    return nil, rt_error("NotFound", "contract not found: " .. id)
  end
  return e
end
local function copy_method(m)
  local out = { name = m.name, description = m.description or "" }
  if type(m.input_schemas) == "table" and #m.input_schemas > 0 then out.input_schemas = m.input_schemas end
  if type(m.output_schemas) == "table" and #m.output_schemas > 0 then out.output_schemas = m.output_schemas end
  return out
end
-- "ns:name?k=v&..." -> "ns:name", {k = v} (values: booleans and numbers converted)
local function unescape(s)
  return (s:gsub("+", " "):gsub("%%(%x%x)", function(h) return string.char(tonumber(h, 16)) end))
end
local function parse_id(raw)
  if type(raw) ~= "string" then return nil, nil, rt_error("Invalid", "binding ID must be a string") end
  local id, query = raw:match("^([^?]*)%?(.*)$")
  id = id or raw
  local ns, name = id:match("^([^:]+):(.+)$")
  if not ns then
    return nil, nil, rt_error("Invalid", "invalid binding ID " .. string.format("%q", raw) .. " (expected namespace:name)")
  end
  local params
  if query and query ~= "" then
    params = {}
    for pair in query:gmatch("[^&]+") do
      local k, v = pair:match("^([^=]*)=(.*)$")
      k, v = unescape(k or pair), unescape(v or "")
      if v == "true" then v = true
      elseif v == "false" then v = false
      elseif v:match("^%-?%d+$") then v = math.tointeger(tonumber(v)) or tonumber(v)
      elseif v:match("^%-?%d*%.%d+$") then v = tonumber(v) end
      if k ~= "" then params[k] = v end
    end
  end
  return id, params
end

-- What an instance is, out of reach of the code that holds it.
local INST = setmetatable({}, { __mode = "k" })
local Instance = {}
local function ms(v, default)
  if v == nil then return default end
  if type(v) == "number" then return v end
  local d = time.parse_duration(v)
  if d then return d:milliseconds() end
  return default
end
local NO_RETRY = { Invalid = true, PermissionDenied = true, Internal = true }
local function retries(opts, err)
  if type(err) ~= "userdata" and type(err) ~= "table" then return false end
  local ok, kind = pcall(function() return err:kind() end)
  local ok2, retryable = pcall(function() return err:retryable() end)
  if ok2 and retryable == false then return false end
  kind = ok and kind or ""
  local r = opts.retry
  if type(r.skip_kinds) == "table" then
    for _, k in ipairs(r.skip_kinds) do if k == kind then return false end end
  end
  if type(r.retry_kinds) == "table" then
    for _, k in ipairs(r.retry_kinds) do if k == kind then return true end end
    return false
  end
  return not NO_RETRY[kind]
end
local function invoke(st, name, async, ...)
  local fid = st.methods[name]
  if not fid then
    return nil, rt_error("NotFound", "method not found: " .. tostring(name))
  end
  if not rt_can("contract.call", name) then return nil, denied("contract.call", name) end
  local ex = setmetatable({ ctx = st.ctx, sec = st.sec, opts = st.opts }, ExecutorMT)
  if async then return ex:async(fid, ...) end
  local retry = st.opts and type(st.opts.retry) == "table" and st.opts.retry
  local attempts = retry and math.max(1, math.tointeger(retry.max_attempts) or 1) or 1
  local delay = retry and ms(retry.initial_delay, 100) or 0
  local max_delay = retry and ms(retry.max_delay, 10000) or 0
  local factor = retry and tonumber(retry.backoff_factor) or 2.0
  local jitter = retry and tonumber(retry.jitter) or 0.1
  local v, err
  for attempt = 1, attempts do
    v, err = ex:call(fid, ...)
    if err == nil or attempt == attempts or not retries(st.opts, err) then break end
    local d = math.min(delay, max_delay)
    d = d * (1 + jitter * (2 * math.random() - 1))
    if d > 0 then time.sleep(string.format("%dms", math.floor(d))) end
    delay = delay * factor
  end
  return v, err
end
local InstanceMT = {
  __name = "contract.Instance", __metatable = "contract.Instance",
  __index = function(inst, key)
    local st = INST[inst]
    if not st or type(key) ~= "string" then return nil end
    local name, async = key, false
    if not st.methods[key] and key:sub(-6) == "_async" and st.methods[key:sub(1, -7)] then
      name, async = key:sub(1, -7), true
    end
    return function(self, ...)
      if self ~= inst then
        error("contract method " .. key .. " must be called with ':'", 2)
      end
      return invoke(st, name, async, ...)
    end
  end,
  __newindex = function() error("a contract instance is read-only", 2) end,
  __tostring = function(inst) local st = INST[inst] return "contract.Instance{" .. (st and st.binding or "?") .. "}" end,
}

-- Open binding `id` (only: the contracts in `only`, or every one it implements).
local function open_binding(raw, scope, cfg, only)
  local id, params, perr = parse_id(raw)
  if not id then return nil, perr end
  if not rt_can("contract.open", id) then return nil, denied("contract.open", id) end
  local e = entry_of(id)
  if e and e.kind == "contract.definition" then
    -- a contract's ID opens its default binding
    local def_id = id
    local found
    for _, b in ipairs(bindings_of(def_id)) do
      local be = entry_of(b)
      for _, c in ipairs(be and be.data.contracts or {}) do
        if full(c.contract, ns_of(b)) == def_id and c.default then found = b break end
      end
      if found then break end
    end
    if not found then return nil, rt_error("NotFound", "no default binding for contract " .. def_id) end
    id, e, only = found, entry_of(found), only or def_id
  end
  if not e or e.kind ~= "contract.binding" then
    return nil, rt_error("NotFound", "binding not found: " .. id)
  end
  local st = { binding = id, methods = {}, contracts = {}, opts = cfg and cfg.opts, sec = cfg and cfg.sec }
  local ns = ns_of(id)
  for _, c in ipairs(e.data.contracts or {}) do
    local cid = full(c.contract, ns)
    if cid and (only == nil or only == cid) then
      st.contracts[cid] = true
      for mname, fref in pairs(type(c.methods) == "table" and c.methods or {}) do
        st.methods[mname] = full(fref, ns)
      end
    end
  end
  if only and not st.contracts[only] then
    return nil, rt_error("NotFound", "binding " .. id .. " does not implement contract " .. only)
  end
  -- context: the query's values, the contract's with_context, then the scope table
  local ctx
  for _, layer in ipairs({ params or false, cfg and cfg.ctx or false, type(scope) == "table" and scope or false }) do
    if layer then
      ctx = ctx or {}
      for k, v in pairs(layer) do if type(k) == "string" then ctx[k] = v end end
    end
  end
  st.ctx = ctx
  local inst = setmetatable({}, InstanceMT)
  INST[inst] = st
  return inst
end

function contract.open(id, scope, options)
  local cfg
  if type(options) == "table" then cfg = { opts = options } end
  return open_binding(id, scope, cfg, nil)
end

function contract.find_implementations(id)
  if type(id) ~= "string" then error("bad argument #1 to 'find_implementations' (string expected, got " .. type(id) .. ")", 2) end
  if not rt_can("contract.implementations", id) then return nil, denied("contract.implementations", id) end
  local _, err = definition(id)
  if err then return nil, err end
  return bindings_of(id)
end

function contract.is(inst, id)
  local st = INST[inst]
  return st ~= nil and st.contracts[id] == true
end

local Contract = {}
local ContractMT = { __index = Contract, __name = "contract.Contract", __metatable = "contract.Contract" }
local CON = setmetatable({}, { __mode = "k" })
local function con_copy(c)
  local st = CON[c]
  local n = setmetatable({}, ContractMT)
  CON[n] = { id = st.id, def = st.def, ctx = st.ctx, sec = st.sec, opts = st.opts }
  return n, CON[n]
end
function contract.get(id)
  if type(id) ~= "string" then error("bad argument #1 to 'get' (string expected, got " .. type(id) .. ")", 2) end
  if not rt_can("contract.get", id) then return nil, denied("contract.get", id) end
  local e, err = definition(id)
  if not e then return nil, err end
  local c = setmetatable({}, ContractMT)
  CON[c] = { id = id, def = e }
  return c
end
function Contract.id(c) return CON[c].id end
function Contract.methods(c)
  local out = {}
  for i, m in ipairs(CON[c].def.data.methods or {}) do out[i] = copy_method(m) end
  return out
end
function Contract.method(c, name)
  for _, m in ipairs(CON[c].def.data.methods or {}) do
    if m.name == name then return copy_method(m) end
  end
  return nil, rt_error("NotFound", "method not found: " .. tostring(name))
end
function Contract.implementations(c) return contract.find_implementations(CON[c].id) end
function Contract.open(c, binding, scope)
  local st = CON[c]
  return open_binding(binding or st.id, scope, st, st.id)
end
function Contract.with_context(c, values)
  if type(values) ~= "table" then error("bad argument #1 to 'with_context' (table expected, got " .. type(values) .. ")", 2) end
  if not rt_can("contract.context", "context") then return nil, denied("contract.context", "context") end
  local n, st = con_copy(c)
  local ctx = {}
  for k, v in pairs(st.ctx or {}) do ctx[k] = v end
  for k, v in pairs(values) do if type(k) == "string" then ctx[k] = v end end
  st.ctx = ctx
  return n
end
function Contract.with_options(c, opts)
  if type(opts) ~= "table" then error("bad argument #1 to 'with_options' (table expected, got " .. type(opts) .. ")", 2) end
  local n, st = con_copy(c)
  st.opts = opts
  return n
end
local function con_sec(c, key, v, what)
  if type(v) ~= "userdata" then error(what .. " expected", 3) end
  if not rt_can("contract.security", "security") then return nil, denied("contract.security", "security") end
  local n, st = con_copy(c)
  st.sec = { actor = st.sec and st.sec.actor, scope = st.sec and st.sec.scope }
  st.sec[key] = v
  return n
end
function Contract.with_actor(c, actor) return con_sec(c, "actor", actor, "Actor") end
function Contract.with_scope(c, scope) return con_sec(c, "scope", scope, "Scope") end
