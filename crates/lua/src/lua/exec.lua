-- exec (Wippy's exec module): the Rust halves (modules/exec.rs) make and signal OS
-- processes; every wait (start, wait, read, write) is a command this process awaits.
-- Compiled on a VM's first use of the library (the prelude's LAZY), given what it needs.
local deps = ...
local _ENV = deps.env
local R, LIBS, rt_error, await_cmd = deps.R, deps.LIBS, deps.rt_error, deps.await_cmd
local exec = LIBS.exec
local get, new, start, wait, read, write, signal, close =
  R.exec_get, R.exec_new, R.exec_start, R.exec_wait, R.exec_read, R.exec_write, R.exec_signal, R.exec_close
local function awaited(id, err)
  if not id then return nil, err end
  return await_cmd(id)
end
local Out = {}
local OutMT = { __index = Out, __name = "exec.Stream", __metatable = "exec.Stream" }
function Out.read(st, n)
  if st.closed or not st.proc.id then return nil end
  local chunk, err = awaited(read(st.proc.id, st.which, n))
  if chunk == nil then st.closed = true end
  return chunk, err
end
function Out.close(st) st.closed = true return true end
local Proc = {}
local ProcMT = { __index = Proc, __name = "exec.Process", __metatable = "exec.Process" }
local function live(p)
  if not p.id then return nil, rt_error("Invalid", "process closed") end
  return p.id
end
function Proc.start(p)
  local id, err = live(p)
  if not id then return nil, err end
  return awaited(start(id))
end
function Proc.wait(p)
  local id, err = live(p)
  if not id then return nil, err end
  return awaited(wait(id))
end
function Proc.stdout_stream(p) return setmetatable({ proc = p, which = "stdout" }, OutMT) end
function Proc.stderr_stream(p) return setmetatable({ proc = p, which = "stderr" }, OutMT) end
function Proc.write_stdin(p, data)
  local id, err = live(p)
  if not id then return nil, err end
  if type(data) ~= "string" then data = tostring(data) end
  return awaited(write(id, data))
end
function Proc.signal(p, sig)
  local id, err = live(p)
  if not id then return nil, err end
  return signal(id, math.tointeger(sig) or 15)
end
function Proc.close(p, force)
  if p.id then close(p.id, force == true); p.id = nil end
  return true
end
function Proc.resize() return nil, rt_error("Invalid", "the process has no PTY") end
function Proc.attach_terminal() return nil, rt_error("Invalid", "the process has no PTY") end
local Executor = {}
local ExecutorMT = { __index = Executor, __name = "exec.Executor", __metatable = "exec.Executor" }
function exec.get(id)
  local ok, err = get(id)
  if not ok then return nil, err end
  return setmetatable({ id = id }, ExecutorMT)
end
function Executor.exec(ex, cmd, opts)
  if ex.released then return nil, rt_error("Invalid", "executor released") end
  local id, err = new(ex.id, cmd, opts)
  if not id then return nil, err end
  return setmetatable({ id = id }, ProcMT)
end
function Executor.release(ex) ex.released = true return true end
