//! `exec` (Wippy's `en/lua/dynamic/exec.md` and `en/system/exec.md`) over `exec.native`
//! entries: `exec.get(id)` (permission `exec.get`) gives an executor whose
//! `exec(cmd, {work_dir, env})` (permission `exec.run` on the command) makes an OS process,
//! not started: `start`, `wait` (the exit code; -1 for a signal), `stdout_stream`,
//! `stderr_stream` (`read(n?)`, nil at the end), `write_stdin`, `signal`, `close(force?)`.
//!
//! As Wippy's: the command is split with shell-like quoting but no shell runs it; the
//! child's environment is only the executor's `default_env` and the call's `env`; a
//! `command_whitelist` allows exactly the commands it lists. Every wait (start, wait, a
//! read, a write) is a command on the node's I/O runtime, so a process waiting on a child
//! holds no worker thread. A child outlives neither its handle's `close` nor the Lua
//! process that made it. PTYs are not offered (`pty` is Invalid).

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Weak};

use mlua::{Lua, Table, Value as LuaValue};
use parking_lot::Mutex;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use wippy_runtime::{Command, Error, Pid, Value};

use super::{fail, invalid, or_fail};
use crate::catalog::Catalog;

type Answer = mlua::Result<(LuaValue, LuaValue)>;

/// One `exec.native` entry.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct ExecConfig {
    pub default_work_dir: Option<PathBuf>,
    pub default_env: Vec<(String, String)>,
    /// Empty: any command.
    pub command_whitelist: Vec<String>,
}

struct Spec {
    program: PathBuf,
    args: Vec<String>,
    work_dir: Option<PathBuf>,
    env: Vec<(String, String)>,
}

struct Io {
    stdin: Option<tokio::process::ChildStdin>,
    stdout: Option<tokio::process::ChildStdout>,
    stderr: Option<tokio::process::ChildStderr>,
}

struct Proc {
    owner: Pid,
    spec: Mutex<Option<Spec>>,
    child: tokio::sync::Mutex<Option<tokio::process::Child>>,
    os_pid: Mutex<Option<u32>>,
    io: tokio::sync::Mutex<Io>,
    exit: Mutex<Option<i64>>,
}

fn procs() -> &'static Mutex<HashMap<u64, Arc<Proc>>> {
    static P: std::sync::OnceLock<Mutex<HashMap<u64, Arc<Proc>>>> = std::sync::OnceLock::new();
    P.get_or_init(Default::default)
}
static NEXT: AtomicU64 = AtomicU64::new(1);
static LIVE: AtomicUsize = AtomicUsize::new(0);


fn get(id: i64) -> Result<Arc<Proc>, Error> {
    procs().lock().get(&(id as u64)).cloned().ok_or_else(|| invalid("process closed"))
}

fn remove(id: u64) -> Option<Arc<Proc>> {
    let p = procs().lock().remove(&id);
    if p.is_some() {
        LIVE.fetch_sub(1, Ordering::Relaxed);
    }
    p
}

/// The children Lua process `pid` made and did not close: killed (its exit or upgrade).
pub(crate) fn reap_owner(pid: Pid) {
    if LIVE.load(Ordering::Relaxed) == 0 {
        return;
    }
    let ids: Vec<u64> = procs().lock().iter().filter(|(_, p)| p.owner == pid).map(|(id, _)| *id).collect();
    for id in ids {
        close(id, true);
    }
}

fn close(id: u64, force: bool) {
    let Some(p) = remove(id) else { return };
    let os = *p.os_pid.lock();
    let exited = p.exit.lock().is_some();
    if let (Some(os), false) = (os, exited) {
        signal_os(os, if force { libc::SIGKILL } else { libc::SIGTERM });
    }
    // the Child (kill_on_drop) goes with the last handle; tokio reaps it
}

fn signal_os(pid: u32, sig: i32) -> bool {
    // SAFETY: kill(2) with a PID this module spawned and has not seen exit.
    unsafe { libc::kill(pid as i32, sig) == 0 }
}

/// `cmd` as Wippy splits it: words separated by whitespace; quotes group, a backslash
/// escapes the next character (not inside single quotes).
pub fn split_command(cmd: &str) -> Result<Vec<String>, String> {
    let mut words = Vec::new();
    let mut cur = String::new();
    let mut in_word = false;
    let mut chars = cmd.chars();
    let mut quote: Option<char> = None;
    while let Some(c) = chars.next() {
        match (quote, c) {
            (Some('\''), '\'') | (Some('"'), '"') => quote = None,
            (Some('"'), '\\') => {
                if let Some(n) = chars.next() {
                    cur.push(n);
                }
            }
            (Some(_), c) => cur.push(c),
            (None, '\'' | '"') => {
                quote = Some(c);
                in_word = true;
            }
            (None, '\\') => {
                if let Some(n) = chars.next() {
                    cur.push(n);
                }
                in_word = true;
            }
            (None, c) if c.is_whitespace() => {
                if in_word {
                    words.push(std::mem::take(&mut cur));
                    in_word = false;
                }
            }
            (None, c) => {
                cur.push(c);
                in_word = true;
            }
        }
    }
    if quote.is_some() {
        return Err("unclosed quote in command".into());
    }
    if in_word {
        words.push(cur);
    }
    Ok(words)
}

/// Find `program` as Go's exec.LookPath does, on the node's own PATH (the child's
/// environment is clean).
fn look_path(program: &str) -> Option<PathBuf> {
    use std::os::unix::fs::PermissionsExt;
    if program.contains('/') {
        return Some(PathBuf::from(program));
    }
    let path = std::env::var_os("PATH")?;
    std::env::split_paths(&path).map(|d| d.join(program)).find(|p| std::fs::metadata(p).is_ok_and(|m| m.is_file() && m.permissions().mode() & 0o111 != 0))
}

fn string_map(v: &LuaValue, what: &str) -> Result<Vec<(String, String)>, Error> {
    match v {
        LuaValue::Nil => Ok(Vec::new()),
        LuaValue::Table(t) => {
            let mut out = Vec::new();
            for pair in t.clone().pairs::<LuaValue, LuaValue>() {
                let (k, v) = pair.map_err(|e| invalid(e.to_string()))?;
                let k = match k {
                    LuaValue::String(s) => s.to_string_lossy().to_string(),
                    _ => return Err(invalid(format!("{what}: keys must be strings"))),
                };
                let v = match v {
                    LuaValue::String(s) => s.to_string_lossy().to_string(),
                    LuaValue::Integer(n) => n.to_string(),
                    LuaValue::Number(n) => n.to_string(),
                    LuaValue::Boolean(b) => b.to_string(),
                    _ => return Err(invalid(format!("{what}.{k}: must be a string"))),
                };
                out.push((k, v));
            }
            out.sort();
            Ok(out)
        }
        _ => Err(invalid(format!("{what} must be a table"))),
    }
}

fn task(lua: &Lua, fut: impl std::future::Future<Output = Result<Value, Error>> + Send + 'static) -> Answer {
    crate::current::with(|cx, _| match cx.try_command(Command::Task(Box::pin(fut))) {
        Ok(id) => Ok((LuaValue::Integer(id.0 as i64), LuaValue::Nil)),
        Err(e) => fail(lua, e),
    })
}

/// The Rust halves on `R` (the prelude's `exec` wraps them; the waits are its `await_cmd`).
pub(crate) fn internal(lua: &Lua, r: &Table, catalog: Weak<Catalog>) -> mlua::Result<()> {
    let cat = catalog.clone();
    r.raw_set(
        "exec_get",
        lua.create_function(move |lua, id: LuaValue| -> Answer {
            let id = or_fail!(lua, super::resource_id(&id, "executor"));
            if let Err(e) = crate::current::with(|cx, _| Ok(cx.allow("exec.get", &id)))? {
                return fail(lua, invalid(format!("permission denied: {}", e.message)));
            }
            if cat.upgrade().and_then(|c| c.executors.read().get(&id).cloned()).is_none() {
                return fail(lua, Error::not_found(format!("executor not found: {id}")).with_retryable(false));
            }
            Ok((LuaValue::Boolean(true), LuaValue::Nil))
        })?,
    )?;
    r.raw_set(
        "exec_new",
        lua.create_function(move |lua, (executor, cmd, opts): (String, LuaValue, LuaValue)| -> Answer {
            let LuaValue::String(cmd) = cmd else { return fail(lua, invalid("command must be a string")) };
            let cmd = cmd.to_string_lossy().to_string();
            let Some(cfg) = catalog.upgrade().and_then(|c| c.executors.read().get(&executor).cloned()) else {
                return fail(lua, invalid(format!("executor {executor} is gone")));
            };
            let (mut work_dir, mut env) = (None, Vec::new());
            if let LuaValue::Table(o) = &opts {
                if !o.raw_get::<LuaValue>("pty")?.is_nil() {
                    return fail(lua, invalid("a PTY is not available in this runtime"));
                }
                if let LuaValue::String(d) = o.raw_get::<LuaValue>("work_dir")? {
                    work_dir = Some(PathBuf::from(d.to_string_lossy().to_string()));
                }
                env = or_fail!(lua, string_map(&o.raw_get::<LuaValue>("env")?, "env"));
            }
            let allowed = crate::current::with(|cx, _| {
                let mut meta = wippy_runtime::Table::new();
                meta.set("work_dir", work_dir.as_ref().map(|d| d.to_string_lossy().to_string()).unwrap_or_default().as_str());
                let names = env.iter().map(|(k, _)| Value::from(k.as_str())).collect();
                meta.set("env_names", Value::Table(Arc::new(wippy_runtime::Table { array: names, map: Vec::new() })));
                meta.set("pty.requested", false);
                Ok(cx.allow_with("exec.run", &cmd, &meta))
            })?;
            if let Err(e) = allowed {
                return fail(lua, invalid(format!("permission denied: {}", e.message)));
            }
            if !cfg.command_whitelist.is_empty() && !cfg.command_whitelist.contains(&cmd) {
                return fail(lua, invalid(format!("command not allowed by executor {executor}: {cmd}")));
            }
            let words = match split_command(&cmd) {
                Ok(w) if !w.is_empty() => w,
                Ok(_) => return fail(lua, invalid("command is empty")),
                Err(m) => return fail(lua, invalid(m)),
            };
            let Some(program) = look_path(&words[0]) else {
                return fail(lua, Error::not_found(format!("executable file not found in $PATH: {}", words[0])).with_retryable(false));
            };
            let mut all_env = cfg.default_env.clone();
            for (k, v) in env {
                all_env.retain(|(x, _)| *x != k);
                all_env.push((k, v));
            }
            let spec = Spec { program, args: words[1..].to_vec(), work_dir: work_dir.or_else(|| cfg.default_work_dir.clone()), env: all_env };
            let owner = crate::current::with(|cx, _| Ok(cx.pid()))?;
            let id = NEXT.fetch_add(1, Ordering::Relaxed);
            let p = Proc {
                owner,
                spec: Mutex::new(Some(spec)),
                child: tokio::sync::Mutex::new(None),
                os_pid: Mutex::new(None),
                io: tokio::sync::Mutex::new(Io { stdin: None, stdout: None, stderr: None }),
                exit: Mutex::new(None),
            };
            procs().lock().insert(id, Arc::new(p));
            LIVE.fetch_add(1, Ordering::Relaxed);
            Ok((LuaValue::Integer(id as i64), LuaValue::Nil))
        })?,
    )?;
    r.raw_set(
        "exec_start",
        lua.create_function(|lua, id: i64| -> Answer {
            let p = or_fail!(lua, get(id));
            let Some(spec) = p.spec.lock().take() else { return fail(lua, invalid("process already started")) };
            task(lua, async move {
                let mut c = tokio::process::Command::new(&spec.program);
                c.args(&spec.args).env_clear().envs(spec.env.iter().map(|(k, v)| (k, v))).kill_on_drop(true);
                c.stdin(std::process::Stdio::piped()).stdout(std::process::Stdio::piped()).stderr(std::process::Stdio::piped());
                if let Some(d) = &spec.work_dir {
                    c.current_dir(d);
                }
                let mut child = c.spawn().map_err(|e| Error::internal(format!("start {}: {e}", spec.program.display())).with_retryable(false))?;
                *p.os_pid.lock() = child.id();
                {
                    let mut io = p.io.lock().await;
                    io.stdin = child.stdin.take();
                    io.stdout = child.stdout.take();
                    io.stderr = child.stderr.take();
                }
                *p.child.lock().await = Some(child);
                Ok(Value::Bool(true))
            })
        })?,
    )?;
    r.raw_set(
        "exec_wait",
        lua.create_function(|lua, id: i64| -> Answer {
            let p = or_fail!(lua, get(id));
            if p.spec.lock().is_some() {
                return fail(lua, invalid("process not started"));
            }
            task(lua, async move {
                if let Some(code) = *p.exit.lock() {
                    return Ok(Value::Int(code));
                }
                let mut guard = p.child.lock().await;
                let Some(child) = guard.as_mut() else { return Err(invalid("process not started")) };
                let status = child.wait().await.map_err(|e| Error::internal(format!("wait: {e}")))?;
                let code = status.code().map_or(-1, i64::from);
                *p.exit.lock() = Some(code);
                Ok(Value::Int(code))
            })
        })?,
    )?;
    r.raw_set(
        "exec_read",
        lua.create_function(|lua, (id, which, n): (i64, String, Option<i64>)| -> Answer {
            let p = or_fail!(lua, get(id));
            let n = n.filter(|n| *n > 0).unwrap_or(65536).min(1 << 20) as usize;
            task(lua, async move {
                let mut io = p.io.lock().await;
                let mut buf = vec![0u8; n];
                let got = match which.as_str() {
                    "stdout" => match io.stdout.as_mut() {
                        Some(s) => s.read(&mut buf).await,
                        None => Ok(0),
                    },
                    _ => match io.stderr.as_mut() {
                        Some(s) => s.read(&mut buf).await,
                        None => Ok(0),
                    },
                }
                .map_err(|e| Error::internal(format!("read {which}: {e}")))?;
                if got == 0 {
                    return Ok(Value::Nil);
                }
                Ok(Value::Str(Arc::from(&buf[..got])))
            })
        })?,
    )?;
    r.raw_set(
        "exec_write",
        lua.create_function(|lua, (id, data): (i64, mlua::LuaString)| -> Answer {
            let p = or_fail!(lua, get(id));
            if p.spec.lock().is_some() {
                return fail(lua, invalid("process not started"));
            }
            let data = data.as_bytes().to_vec();
            task(lua, async move {
                let mut io = p.io.lock().await;
                let Some(stdin) = io.stdin.as_mut() else { return Err(invalid("stdin is closed")) };
                stdin.write_all(&data).await.map_err(|e| Error::internal(format!("write stdin: {e}")))?;
                stdin.flush().await.map_err(|e| Error::internal(format!("write stdin: {e}")))?;
                Ok(Value::Bool(true))
            })
        })?,
    )?;
    r.raw_set(
        "exec_signal",
        lua.create_function(|lua, (id, sig): (i64, i64)| -> Answer {
            let p = or_fail!(lua, get(id));
            let Some(os) = *p.os_pid.lock() else { return fail(lua, invalid("process not started")) };
            if p.exit.lock().is_some() || !signal_os(os, sig as i32) {
                return fail(lua, invalid("process has exited"));
            }
            Ok((LuaValue::Boolean(true), LuaValue::Nil))
        })?,
    )?;
    r.raw_set(
        "exec_close",
        lua.create_function(|_, (id, force): (i64, Option<bool>)| {
            close(id as u64, force.unwrap_or(false));
            Ok(true)
        })?,
    )?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::split_command;

    #[test]
    fn commands_split_as_wippys() {
        assert_eq!(split_command("grep 'hello world' notes.txt").unwrap(), ["grep", "hello world", "notes.txt"]);
        assert_eq!(split_command("echo $HOME \"a \\\"b\\\"\" c\\ d").unwrap(), ["echo", "$HOME", "a \"b\"", "c d"]);
        assert_eq!(split_command("  ls   -la ").unwrap(), ["ls", "-la"]);
        assert_eq!(split_command("echo ''").unwrap(), ["echo", ""]);
        assert!(split_command("echo 'open").is_err());
    }
}
