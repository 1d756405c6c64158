//! The control endpoint of a running node, and its clients (`wippy ps`, `inspect`, `top`).
//!
//! A Unix domain socket at `<project>/.wippy/control.sock`: the directory is made mode
//! 0700 and the socket 0600, and a connecting peer whose user ID (SO_PEERCRED) is not the
//! node's is refused, so nobody but the node's user can talk to it. No TCP. One JSON
//! request per line, one JSON answer per line; a line that is not a request gets an error
//! answer, a line over 64 KiB closes the connection, and at most `MAX_CLIENTS` connections
//! are served at once (more are told so and closed). Nothing a client sends reaches the
//! processes: every request only reads.

use std::io::{BufRead, BufReader, Read, Write};
use std::os::unix::fs::{DirBuilderExt, PermissionsExt};
use std::os::unix::io::AsRawFd;
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};
use wippy_runtime::{NodeRef, Pid, ProcessInfo};

const MAX_LINE: u64 = 64 * 1024;
const MAX_CLIENTS: usize = 8;
const IDLE: Duration = Duration::from_secs(30);

/// Where a project's node listens.
pub fn socket_path(project_dir: &Path) -> PathBuf {
    project_dir.join(".wippy").join("control.sock")
}

/// One process, as `ps` shows it.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq)]
pub struct Proc {
    pub pid: String,
    pub entry: Option<String>,
    pub host: String,
    pub state: String,
    /// Messages waiting in its mailbox.
    pub mailbox: usize,
    pub mailbox_bytes: usize,
    pub memory: usize,
    /// `true`: its own VM's memory (`isolation: process`); `false`: its share.
    pub memory_exact: bool,
    /// Steps run (each a resume).
    pub steps: u64,
    pub age_ms: u64,
    pub names: Vec<String>,
    pub actor: Option<String>,
}

impl From<&ProcessInfo> for Proc {
    fn from(p: &ProcessInfo) -> Proc {
        Proc {
            pid: p.pid.to_string(),
            entry: p.entry.map(str::to_string),
            host: p.host.clone(),
            state: format!("{:?}", p.state).to_lowercase(),
            mailbox: p.queued,
            mailbox_bytes: p.queued_bytes,
            memory: p.memory,
            memory_exact: p.memory_exact,
            steps: p.steps,
            age_ms: p.age.as_millis() as u64,
            names: p.names.iter().map(|n| n.to_string()).collect(),
            actor: p.actor.clone(),
        }
    }
}

/// `inspect`: a process with its topology and its last error.
#[derive(Serialize, Deserialize, Clone, Debug)]
pub struct Detail {
    #[serde(flatten)]
    pub proc: Proc,
    pub links: Vec<String>,
    pub monitors: Vec<String>,
    pub monitoring: Vec<String>,
    pub trap_links: bool,
    pub pending_commands: usize,
    /// The entry's version in the registry now (bumped by every change of its source).
    pub entry_version: Option<u64>,
    /// The service this process runs, and the last error that service recorded.
    pub service: Option<String>,
    pub last_error: Option<String>,
}

#[derive(Serialize, Deserialize, Clone, Debug, PartialEq)]
pub struct Host {
    pub name: String,
    pub workers: usize,
    pub busy: usize,
    pub queued: usize,
    pub processes: usize,
    pub max_processes: usize,
}

#[derive(Serialize, Deserialize, Clone, Debug, PartialEq)]
pub struct Service {
    pub id: String,
    pub state: String,
    pub attempt: u32,
    pub restarts: u64,
    pub pid: Option<String>,
    pub error: Option<String>,
}

/// Node-wide figures.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq)]
pub struct Totals {
    pub os_pid: u32,
    pub uptime_ms: u64,
    pub processes: usize,
    /// Resident memory of the OS process.
    pub memory_rss: u64,
    /// The Lua VMs' heaps.
    pub memory_lua: u64,
    /// Since the node started (monotonic).
    pub messages: u64,
    pub spawns: u64,
    pub exits_normal: u64,
    pub exits_error: u64,
    pub exits_killed: u64,
}

/// Everything `top` shows, at one moment.
#[derive(Serialize, Deserialize, Clone, Debug, Default)]
pub struct Snapshot {
    pub totals: Totals,
    pub hosts: Vec<Host>,
    pub services: Vec<Service>,
    pub processes: Vec<Proc>,
}

#[derive(Deserialize, Debug)]
#[serde(tag = "cmd", rename_all = "lowercase", deny_unknown_fields)]
enum Request {
    Ps {
        #[serde(default)]
        host: Option<String>,
    },
    Inspect {
        pid: String,
    },
    Top,
}

/// What a node serves from (the node, and the Lua runtime for Lua memory and versions).
#[derive(Clone)]
pub struct Source {
    pub node: NodeRef,
    pub lua: wippy_lua::LuaRuntime,
    pub started: Instant,
}

impl Source {
    pub fn totals(&self) -> Totals {
        let t = wippy_runtime::stats::totals();
        Totals {
            os_pid: std::process::id(),
            uptime_ms: self.started.elapsed().as_millis() as u64,
            processes: self.node.process_count(),
            memory_rss: wippy_lua::resident_bytes(),
            memory_lua: self.node.host_stats().iter().map(|h| self.lua.shard_memory(&h.name) as u64).sum(),
            messages: t.messages,
            spawns: t.spawns,
            exits_normal: t.exits_normal,
            exits_error: t.exits_error,
            exits_killed: t.exits_killed,
        }
    }

    pub fn hosts(&self) -> Vec<Host> {
        self.node
            .host_stats()
            .into_iter()
            .map(|h| Host { name: h.name, workers: h.workers, busy: h.busy, queued: h.queued, processes: h.processes, max_processes: h.max_processes })
            .collect()
    }

    pub fn services(&self) -> Vec<Service> {
        self.node
            .services()
            .into_iter()
            .map(|s| Service {
                id: s.id,
                state: s.state.to_string(),
                attempt: s.attempt,
                restarts: s.restarts,
                pid: s.pid.map(|p| p.to_string()),
                error: s.error,
            })
            .collect()
    }

    pub fn snapshot(&self) -> Snapshot {
        Snapshot {
            totals: self.totals(),
            hosts: self.hosts(),
            services: self.services(),
            processes: self.node.processes(None).iter().map(Proc::from).collect(),
        }
    }

    fn inspect(&self, pid: &str) -> Result<Detail, String> {
        let parsed: Pid = pid.trim().parse().map_err(|e| format!("not a PID: {pid:?} ({e})"))?;
        let info = self.node.process_info(parsed).ok_or_else(|| format!("no such process: {parsed}"))?;
        let service = self.node.services().into_iter().find(|s| s.pid == Some(parsed));
        let strs = |v: &[Pid]| v.iter().map(|p| p.to_string()).collect::<Vec<_>>();
        Ok(Detail {
            proc: Proc::from(&info),
            links: strs(&info.links),
            monitors: strs(&info.monitors),
            monitoring: strs(&info.monitoring),
            trap_links: info.trap_links,
            pending_commands: info.pending_commands,
            entry_version: info.entry.and_then(|e| self.lua.entry_version(e)),
            last_error: service.as_ref().and_then(|s| s.error.clone()),
            service: service.map(|s| s.id),
        })
    }

    fn answer(&self, line: &str) -> serde_json::Value {
        use serde_json::json;
        let req: Request = match serde_json::from_str(line) {
            Ok(r) => r,
            Err(e) => return json!({ "ok": false, "error": format!("bad request: {e}") }),
        };
        match req {
            Request::Ps { host } => {
                if let Some(h) = &host {
                    if self.node.host(h).is_none() {
                        return json!({ "ok": false, "error": format!("no host named {h:?}") });
                    }
                }
                let procs: Vec<Proc> = self.node.processes(host.as_deref()).iter().map(Proc::from).collect();
                json!({ "ok": true, "processes": procs })
            }
            Request::Inspect { pid } => match self.inspect(&pid) {
                Ok(d) => json!({ "ok": true, "process": d }),
                Err(e) => json!({ "ok": false, "error": e }),
            },
            Request::Top => json!({ "ok": true, "snapshot": self.snapshot() }),
        }
    }
}

/// The listening endpoint; dropping it stops listening and removes the socket file.
pub struct Endpoint {
    path: PathBuf,
    stop: Arc<AtomicBool>,
}

impl Drop for Endpoint {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        // wake the accept loop
        let _ = UnixStream::connect(&self.path);
        let _ = std::fs::remove_file(&self.path);
    }
}

fn peer_uid(s: &UnixStream) -> Option<u32> {
    let mut cred = libc::ucred { pid: 0, uid: 0, gid: 0 };
    let mut len = std::mem::size_of::<libc::ucred>() as libc::socklen_t;
    // SAFETY: SO_PEERCRED fills a ucred of the length given, on a socket we own.
    let r = unsafe { libc::getsockopt(s.as_raw_fd(), libc::SOL_SOCKET, libc::SO_PEERCRED, &mut cred as *mut _ as *mut libc::c_void, &mut len) };
    (r == 0).then_some(cred.uid)
}

/// Listen at `socket_path(project_dir)`. A socket another live node answers on is left
/// alone (this node then has no endpoint: a warning says so); a stale one is replaced.
pub fn serve(project_dir: &Path, source: Source) -> Result<Endpoint, String> {
    let path = socket_path(project_dir);
    let dir = path.parent().expect("has a parent");
    if !dir.exists() {
        // ours: nobody else may even look in (an existing one, the modules directory, is
        // left as it is: the socket's own mode and the peer check keep others out)
        std::fs::DirBuilder::new().recursive(true).mode(0o700).create(dir).map_err(|e| format!("cannot create {}: {e}", dir.display()))?;
    }
    if path.exists() {
        if UnixStream::connect(&path).is_ok() {
            return Err(format!("another node is serving {}", path.display()));
        }
        let _ = std::fs::remove_file(&path);
    }
    let listener = UnixListener::bind(&path).map_err(|e| format!("cannot listen on {}: {e}", path.display()))?;
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600)).map_err(|e| format!("cannot restrict {}: {e}", path.display()))?;
    let stop = Arc::new(AtomicBool::new(false));
    let me = unsafe { libc::geteuid() };
    let clients = Arc::new(AtomicUsize::new(0));
    let stopping = stop.clone();
    std::thread::Builder::new()
        .name("control".into())
        .spawn(move || {
            for conn in listener.incoming() {
                if stopping.load(Ordering::SeqCst) {
                    break;
                }
                let Ok(mut conn) = conn else { continue };
                if peer_uid(&conn) != Some(me) {
                    let _ = conn.write_all(b"{\"ok\":false,\"error\":\"not the node's user\"}\n");
                    continue;
                }
                if clients.fetch_add(1, Ordering::SeqCst) >= MAX_CLIENTS {
                    clients.fetch_sub(1, Ordering::SeqCst);
                    let _ = conn.write_all(b"{\"ok\":false,\"error\":\"too many clients\"}\n");
                    continue;
                }
                let (source, count) = (source.clone(), clients.clone());
                let spawned = std::thread::Builder::new().name("control-client".into()).spawn(move || {
                    client(conn, &source);
                    count.fetch_sub(1, Ordering::SeqCst);
                });
                if spawned.is_err() {
                    clients.fetch_sub(1, Ordering::SeqCst);
                }
            }
        })
        .map_err(|e| format!("cannot start the control thread: {e}"))?;
    Ok(Endpoint { path, stop })
}

fn client(conn: UnixStream, source: &Source) {
    let _ = conn.set_read_timeout(Some(IDLE));
    let Ok(mut out) = conn.try_clone() else { return };
    let mut reader = BufReader::new(conn);
    loop {
        let mut line = Vec::new();
        match (&mut reader).take(MAX_LINE).read_until(b'\n', &mut line) {
            Ok(0) | Err(_) => return,
            Ok(_) => {}
        }
        if !line.ends_with(b"\n") && line.len() as u64 >= MAX_LINE {
            let _ = out.write_all(b"{\"ok\":false,\"error\":\"request line too long\"}\n");
            return;
        }
        let text = String::from_utf8_lossy(&line);
        if text.trim().is_empty() {
            continue;
        }
        let answer = source.answer(text.trim());
        let mut bytes = serde_json::to_vec(&answer).unwrap_or_default();
        bytes.push(b'\n');
        if out.write_all(&bytes).is_err() {
            return;
        }
    }
}

/// A client connection to a project's node.
pub struct Client {
    reader: BufReader<UnixStream>,
    writer: UnixStream,
}

impl Client {
    pub fn connect(project_dir: &Path) -> Result<Client, String> {
        let path = socket_path(project_dir);
        let s = UnixStream::connect(&path).map_err(|e| match e.kind() {
            std::io::ErrorKind::NotFound | std::io::ErrorKind::ConnectionRefused => {
                format!("no node is running in {} (no control socket at {})", project_dir.display(), path.display())
            }
            _ => format!("cannot connect to {}: {e}", path.display()),
        })?;
        let _ = s.set_read_timeout(Some(Duration::from_secs(30)));
        let writer = s.try_clone().map_err(|e| e.to_string())?;
        Ok(Client { reader: BufReader::new(s), writer })
    }

    /// Send one request; the answer's payload (`ok: true`), else its error.
    pub fn call(&mut self, request: serde_json::Value) -> Result<serde_json::Value, String> {
        let mut bytes = serde_json::to_vec(&request).map_err(|e| e.to_string())?;
        bytes.push(b'\n');
        self.writer.write_all(&bytes).map_err(|e| format!("the node closed the connection: {e}"))?;
        let mut line = String::new();
        self.reader.read_line(&mut line).map_err(|e| format!("no answer from the node: {e}"))?;
        let v: serde_json::Value = serde_json::from_str(&line).map_err(|e| format!("bad answer from the node: {e}"))?;
        if v.get("ok") == Some(&serde_json::Value::Bool(true)) {
            Ok(v)
        } else {
            Err(v.get("error").and_then(|e| e.as_str()).unwrap_or("the node refused the request").to_string())
        }
    }

    pub fn snapshot(&mut self) -> Result<Snapshot, String> {
        let v = self.call(serde_json::json!({ "cmd": "top" }))?;
        serde_json::from_value(v["snapshot"].clone()).map_err(|e| format!("bad answer from the node: {e}"))
    }
}

/// Human sizes: 1.2K, 3.4M.
pub fn bytes(n: u64) -> String {
    match n {
        0..=9_999 => format!("{n}"),
        10_000..=9_999_999 => format!("{:.1}K", n as f64 / 1024.0),
        10_000_000..=9_999_999_999 => format!("{:.1}M", n as f64 / (1024.0 * 1024.0)),
        _ => format!("{:.1}G", n as f64 / (1024.0 * 1024.0 * 1024.0)),
    }
}

/// Ages: 850ms, 12s, 3m, 5h, 2d.
pub fn age(ms: u64) -> String {
    match ms {
        0..=999 => format!("{ms}ms"),
        1_000..=59_999 => format!("{}s", ms / 1000),
        60_000..=3_599_999 => format!("{}m", ms / 60_000),
        3_600_000..=86_399_999 => format!("{}h", ms / 3_600_000),
        _ => format!("{}d", ms / 86_400_000),
    }
}

/// How `ps` and `top` order processes.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum Sort {
    Pid,
    Mailbox,
    Memory,
    Cpu,
}

pub fn sort(procs: &mut [Proc], by: Sort) {
    match by {
        Sort::Pid => {}
        Sort::Mailbox => procs.sort_by_key(|p| std::cmp::Reverse(p.mailbox)),
        Sort::Memory => procs.sort_by_key(|p| std::cmp::Reverse(p.memory)),
        Sort::Cpu => procs.sort_by_key(|p| std::cmp::Reverse(p.steps)),
    }
}

/// The `ps` table. Memory marked `~` is a share of a VM other processes use too.
pub fn ps_table(procs: &[Proc]) -> String {
    let w_pid = procs.iter().map(|p| p.pid.len()).max().unwrap_or(3).max(3);
    let w_entry = procs.iter().map(|p| p.entry.as_deref().unwrap_or("-").len()).max().unwrap_or(5).max(5);
    let w_host = procs.iter().map(|p| p.host.len()).max().unwrap_or(4).max(4);
    let mut out = format!("{:w_pid$}  {:w_entry$}  {:w_host$}  {:8}  {:>7}  {:>8}  {:>10}  {:>5}  NAME\n", "PID", "ENTRY", "HOST", "STATE", "MAILBOX", "MEMORY", "STEPS", "AGE");
    for p in procs {
        let mem = if p.memory_exact { bytes(p.memory as u64) } else { format!("~{}", bytes(p.memory as u64)) };
        out.push_str(&format!(
            "{:w_pid$}  {:w_entry$}  {:w_host$}  {:8}  {:>7}  {:>8}  {:>10}  {:>5}  {}\n",
            p.pid,
            p.entry.as_deref().unwrap_or("-"),
            p.host,
            p.state,
            p.mailbox,
            mem,
            p.steps,
            age(p.age_ms),
            if p.names.is_empty() { "-".to_string() } else { p.names.join(",") }
        ));
    }
    out
}
