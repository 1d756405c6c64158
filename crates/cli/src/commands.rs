//! The commands: `run` (with `-x`, a command NAME, or `list`), `test`, `init` and
//! `registry list`. Each loads the project first; any load error is printed (all of them)
//! and nothing starts.

use std::time::{Duration, Instant};

use wippy_registry::{parse_duration, Config, EntryId, Project};
use wippy_runtime::{ExitResult, Spawn, Table, Value};

use crate::boot::{terminal_hides_logs, Boot};
use crate::plan::Plan;
use crate::{signals, Cli};

const FAILURE: u8 = 1;

fn fail(msg: impl std::fmt::Display) -> u8 {
    eprintln!("error: {msg}");
    FAILURE
}

/// Load the project and its configuration and check every entry.
fn load(cli: &Cli) -> Result<(Project, Plan, Config), u8> {
    let report = |errors: &wippy_registry::LoadErrors| {
        for e in &errors.0 {
            eprintln!("error: {e}");
        }
        FAILURE
    };
    let config = Config::load(&cli.dir, &cli.configs, &cli.sets).map_err(fail)?;
    check_config(&config)?;
    let mut project = Project::load(&cli.dir).map_err(|e| report(&e))?;
    // the configuration's `override:` section (values keep their YAML type), then `-o`
    if let Some(section) = config.get("override").and_then(|v| v.as_object()) {
        for (target, value) in section {
            let o = wippy_registry::Override { target: target.clone(), value: value.clone() };
            project.set_override(o).map_err(|e| fail(format!("{}: override {target}: {e}", config.origin("override"))))?;
        }
    }
    for o in &cli.overrides {
        project.apply_override(o).map_err(|e| fail(format!("-o {o}: {e}")))?;
    }
    let plan = Plan::build(&project).map_err(|e| report(&e))?;
    Ok((project, plan, config))
}

/// The configuration keys this runtime reads, and what each takes.
const CONFIG_KEYS: &[(&str, &str)] = &[
    ("version", "the file format's version (Wippy's files say \"1.0\"; not read)"),
    ("logger.level", "debug, info, warn (or warning), error or off"),
    ("logger.encoding", "console or json"),
    ("logger.color", "true or false"),
    ("security.strict_mode", "true or false"),
    ("shutdown.timeout", "a duration such as 30s"),
    ("metrics.prometheus.address", "an address to serve Prometheus metrics on, such as 127.0.0.1:9100"),
    ("prometheus.enabled", "true or false (Wippy's form: serve Prometheus metrics on prometheus.address)"),
    ("prometheus.address", "an address to serve Prometheus metrics on when prometheus.enabled, such as 0.0.0.0:9090 (no default)"),
    ("control.enabled", "true or false (the control socket for ps/inspect/top; default true)"),
    ("override", "entry overrides, `ns:entry:path: value` (as -o, the value keeps its YAML type)"),
    ("vars", "values that ${name} in other values refers to"),
];

/// Check the configuration before anything starts: a bad value of a known key is an
/// error, an unknown key a warning; each says where it is written.
fn check_config(config: &Config) -> Result<(), u8> {
    let mut bad = false;
    for path in config.paths() {
        if path == "override" || path.starts_with("override.") || path == "vars" || path.starts_with("vars.") {
            continue; // (entry overrides: applied, and checked, with the entries; vars: values for ${name})
        }
        let at = config.origin(&path);
        if crate::cluster::is_wippy_engine_key(&path) {
            eprintln!("warning: {at}: {path} is a setting of Wippy's gossip/raft/internode cluster; this node's cluster runs on NATS (cluster.nats.*), so it does not apply");
            continue;
        }
        let Some((_, takes)) = CONFIG_KEYS.iter().chain(crate::cluster::KEYS).find(|(k, _)| *k == path) else {
            let known: Vec<&str> = CONFIG_KEYS.iter().map(|(k, _)| *k).collect();
            eprintln!("warning: {at}: unknown configuration key {path} (known: {})", known.join(", "));
            continue;
        };
        let v = config.get(&path);
        let ok = match path.as_str() {
            "logger.level" => v.and_then(|v| v.as_str()).and_then(level_of).is_some(),
            "logger.encoding" => matches!(v.and_then(|v| v.as_str()), Some("console" | "json")),
            "logger.color" | "security.strict_mode" | "control.enabled" | "cluster.enabled" | "cluster.nats.tls.required" | "prometheus.enabled" => {
                v.is_some_and(|v| v.is_boolean())
            }
            "metrics.prometheus.address" | "prometheus.address" => metrics_address(config).is_ok(),
            "shutdown.timeout" => shutdown_timeout(config).is_ok(),
            _ => true,
        };
        if !ok {
            let shown = v.map(|v| v.to_string()).unwrap_or_default();
            eprintln!("error: {at}: configuration key {path}: invalid value {shown} (expected {takes})");
            bad = true;
        }
    }
    if config.get("prometheus.enabled").and_then(|v| v.as_bool()) == Some(true)
        && config.get("prometheus.address").is_none()
        && config.get("metrics.prometheus.address").is_none()
    {
        let at = config.origin("prometheus.enabled");
        eprintln!("warning: {at}: prometheus.enabled is true but prometheus.address is not set: no metrics endpoint is served (as in Wippy, the address must be given)");
    }
    if bad {
        Err(FAILURE)
    } else {
        Ok(())
    }
}

fn level_of(name: &str) -> Option<tracing_subscriber::filter::LevelFilter> {
    use tracing_subscriber::filter::LevelFilter;
    Some(match name {
        "debug" => LevelFilter::DEBUG,
        "info" => LevelFilter::INFO,
        "warn" | "warning" => LevelFilter::WARN,
        "error" => LevelFilter::ERROR,
        "off" => LevelFilter::OFF,
        _ => return None,
    })
}

/// Logs go to stderr as structured lines: `-s` none, `-v` debug, else `RUST_LOG` when set
/// (tracing-subscriber's filter syntax), else `logger.level` from the configuration, info
/// by default; `logger.encoding: json` writes one JSON object a line. `quiet` (a command
/// or `-x` entry run in the terminal, as Wippy: only warnings and errors) holds unless
/// `-v`, `-c`, `RUST_LOG` or `logger.level` ask for more.
fn init_logging(cli: &Cli, config: &Config, hide: bool, quiet: bool) {
    use tracing_subscriber::filter::{EnvFilter, LevelFilter};
    let filter = if cli.silent || hide {
        EnvFilter::default().add_directive(LevelFilter::OFF.into())
    } else if cli.verbose {
        EnvFilter::default().add_directive(LevelFilter::DEBUG.into())
    } else if let Ok(f) = EnvFilter::try_from_default_env() {
        f
    } else {
        let default = if quiet && !cli.color { LevelFilter::WARN } else { LevelFilter::INFO };
        let level = config.str("logger.level").and_then(level_of).unwrap_or(default);
        EnvFilter::default().add_directive(level.into())
    };
    let color = cli.color || config.get("logger.color").and_then(|v| v.as_bool()).unwrap_or(false);
    let builder = tracing_subscriber::fmt().with_writer(std::io::stderr).with_env_filter(filter);
    let _ = if config.str("logger.encoding") == Some("json") {
        builder.json().try_init()
    } else {
        builder.with_ansi(color).try_init()
    };
}

/// Where to serve Prometheus metrics, if anywhere: `metrics.prometheus.address`, or Wippy's
/// form, `prometheus: {enabled: true, address: ...}` (as in Wippy, no endpoint when the
/// address is not set; `check_config` warns of that).
fn metrics_address(config: &Config) -> Result<Option<(&'static str, std::net::SocketAddr)>, String> {
    let (key, v) = match config.get("metrics.prometheus.address") {
        Some(v) => ("metrics.prometheus.address", v.clone()),
        None if config.get("prometheus.enabled").and_then(|v| v.as_bool()) == Some(true) => match config.get("prometheus.address") {
            Some(v) => ("prometheus.address", v.clone()),
            None => return Ok(None),
        },
        None => return Ok(None),
    };
    let text = v.as_str().map(str::to_string).unwrap_or_else(|| v.to_string());
    use std::net::ToSocketAddrs;
    let text = if text.starts_with(':') { format!("0.0.0.0{text}") } else { text };
    match text.to_socket_addrs().map(|mut a| a.next()) {
        Ok(Some(a)) => Ok(Some((key, a))),
        _ => Err(format!("{key}: invalid address {text:?} (expected host:port)")),
    }
}

/// `security.strict_mode: true` in the configuration: deny when a process has no actor
/// or no scope.
fn strict_mode(config: &Config) -> bool {
    config.get("security.strict_mode").and_then(|v| v.as_bool()).unwrap_or(false)
}

/// How long the terminal process gets to end after the first Ctrl-C before it is
/// terminated: `shutdown.timeout` in the configuration (a duration), 30 s as in Wippy.
fn shutdown_timeout(config: &Config) -> Result<Duration, String> {
    match config.get("shutdown.timeout") {
        None => Ok(Duration::from_secs(30)),
        Some(v) => {
            let text = v.as_str().map(str::to_string).unwrap_or_else(|| v.to_string());
            match parse_duration(&text) {
                Ok(n) if n >= 0 => Ok(Duration::from_nanos(n as u64)),
                _ => Err(format!("shutdown.timeout: invalid duration {text:?} (expected Go syntax such as 500ms, 1.5s, 1m)")),
            }
        }
    }
}

fn warn_all(plan: &Plan) {
    for w in &plan.warnings {
        tracing::warn!("{w}");
    }
}

/// The exit code of `run -x`: error 1, integer that code, `false` 1, anything else 0.
pub fn exit_code(r: &ExitResult) -> u8 {
    match r {
        Err(_) => 1,
        Ok(Value::Int(i)) => (*i).clamp(0, 255) as u8,
        Ok(Value::Bool(false)) => 1,
        Ok(_) => 0,
    }
}

pub fn run(cli: &Cli, exec: Option<&str>, host: Option<&str>, watch: bool, args: &[String], cluster: (Option<&str>, Option<&str>)) -> u8 {
    let (project, plan, config) = match load(cli) {
        Ok(x) => x,
        Err(code) => return code,
    };
    let cluster = match crate::cluster::settings(&config, cluster.0, cluster.1) {
        Ok(c) => c,
        Err(e) => return fail(e),
    };
    let shutdown = match shutdown_timeout(&config) {
        Ok(d) => d,
        Err(e) => return fail(e),
    };
    // `-x HOST/ENTRY` (Wippy's form: `wippy run -x app:terminal/app:cli`) names the
    // terminal host too, as `--host HOST -x ENTRY` does.
    let (exec, host) = match exec.and_then(|x| x.split_once('/')) {
        Some((h, _)) if host.is_some_and(|given| given != h) => {
            return fail(format!("-x {}: names terminal host {h}, but --host says {}", exec.unwrap_or(""), host.unwrap_or("")));
        }
        Some((h, x)) => (Some(x), Some(h)),
        None => (exec, host),
    };
    // What to run, checked before anything starts; the identity a command's
    // `meta.command.security` gives its launch
    let command_identity = |plan: &Plan, id: &EntryId| {
        plan.commands.iter().find(|c| c.entry == *id).and_then(|c| c.identity.as_ref()).map(|spec| std::sync::Arc::new(plan.identity(spec)))
    };
    let (target, args) = match (exec, args.first().map(String::as_str)) {
        (Some(x), _) => match check_exec(&plan, x) {
            Ok(id) => (Some(id), args),
            Err(m) => return fail(m),
        },
        (None, Some("list")) => {
            list_commands(&plan);
            return 0;
        }
        (None, Some(name)) => match plan.commands.iter().find(|c| c.name == name) {
            Some(c) => (Some(c.entry.clone()), &args[1..]),
            None => {
                let names: Vec<&str> = plan.commands.iter().map(|c| c.name.as_str()).collect();
                let known = if names.is_empty() { "the project defines none".into() } else { names.join(", ") };
                return fail(format!("unknown command {name:?} (commands: {known}; see `wippy run list`)"));
            }
        },
        (None, None) => (None, args),
    };
    if target.is_some() {
        if let Err(e) = crate::boot::select_terminal(&plan, host) {
            return fail(format!("-x: {e}"));
        }
    }
    let identity = target.as_ref().and_then(|t| command_identity(&plan, t));
    init_logging(cli, &config, target.is_some() && terminal_hides_logs(&plan, host), target.is_some());
    warn_all(&plan);
    let signals = match signals::install() {
        Ok(s) => s,
        Err(e) => return fail(format!("cannot install signal handlers: {e}")),
    };
    let boot = match Boot::new(&project, plan, strict_mode(&config), cluster) {
        Ok(b) => b,
        Err(e) => return fail(e),
    };
    // system.exit: a graceful stop with the code asked for
    let (exit_tx, exit) = crossbeam_channel::bounded::<i32>(1);
    boot.node.set_exit_hook(std::sync::Arc::new(move |code| {
        let _ = exit_tx.try_send(code);
    }));
    let source = crate::control::Source { node: boot.node.handle(), lua: boot.lua.clone(), started: std::time::Instant::now() };
    let _endpoint = if config.get("control.enabled").and_then(|v| v.as_bool()) == Some(false) {
        None
    } else {
        match crate::control::serve(&cli.dir, source.clone()) {
            Ok(e) => Some(e),
            Err(e) => {
                tracing::warn!("no control socket (wippy ps/top will not reach this node): {e}");
                None
            }
        }
    };
    match metrics_address(&config) {
        Ok(Some((key, addr))) => match crate::metrics::start(key, addr, source) {
            Ok(()) => tracing::info!(%addr, "serving Prometheus metrics"),
            Err(e) => {
                boot.shutdown();
                return fail(e);
            }
        },
        Ok(None) => {}
        Err(e) => {
            boot.shutdown();
            return fail(e);
        }
    }
    // The operator's endpoints are up (a bad metrics address stopped the node) before any
    // service starts: what runs can be watched from its first step.
    let settled = boot.start();
    if watch {
        tracing::info!(dir = %project.src.components().collect::<std::path::PathBuf>().display(), "watching for changes");
        crate::live::watch(boot.live.clone(), project.src.clone());
    }
    let Some(target) = target else {
        if !settled {
            tracing::warn!("some services are still starting");
        }
        eprint!("{}", boot.status_table());
        tracing::info!("running; press Ctrl-C to stop (SIGUSR1 prints the service table)");
        let mut asked = None;
        loop {
            crossbeam_channel::select! {
                recv(signals.stop) -> _ => break,
                recv(exit) -> code => {
                    asked = code.ok();
                    tracing::info!(code = asked, "a process asked the node to exit (system.exit)");
                    break;
                }
                recv(signals.status) -> _ => eprint!("{}", boot.status_table()),
            }
        }
        let clean = boot.shutdown();
        return match asked {
            Some(code) => code.clamp(0, 255) as u8,
            None if clean => 0,
            None => FAILURE,
        };
    };
    let code = run_terminal(&boot, host, &target, identity, args, &signals.stop, &exit, shutdown);
    boot.shutdown();
    code
}

/// `-x ID`: a `ns:name` of a process or function entry.
fn check_exec(plan: &Plan, x: &str) -> Result<EntryId, String> {
    let id: EntryId = x.parse().map_err(|e| format!("-x: {e}"))?;
    match plan.lua.iter().find(|e| e.id == id.as_str()) {
        Some(e) if e.kind == wippy_lua::EntryKind::Library => Err(format!("-x {id}: a library.lua entry cannot be run")),
        Some(_) => Ok(id),
        None => Err(format!("-x {id}: no process.lua or function.lua entry with that ID")),
    }
}

/// Run the terminal process to its end. The first Ctrl-C sends it CANCEL ("interrupted");
/// if it is still alive `shutdown` later it is terminated (exit code 1, "process
/// terminated"). A second Ctrl-C exits at once (signals.rs).
fn run_terminal(
    boot: &Boot,
    host: Option<&str>,
    target: &EntryId,
    identity: Option<std::sync::Arc<wippy_runtime::Identity>>,
    args: &[String],
    stop: &crossbeam_channel::Receiver<()>,
    exit: &crossbeam_channel::Receiver<i32>,
    shutdown: Duration,
) -> u8 {
    let host = match boot.start_terminal(host) {
        Ok(h) => h,
        Err(e) => return fail(e),
    };
    let values: Vec<Value> = args.iter().map(|a| Value::str(a)).collect();
    let mut ctx = Table::new();
    let mut list = Table::new();
    for v in &values {
        list.push(v.clone());
    }
    ctx.set(Value::str(wippy_lua::ARGS_KEY), Value::table(list));
    let mut spawn = Spawn::entry(target.as_str()).args(values).context(std::sync::Arc::new(ctx));
    if let Some(identity) = identity {
        spawn = spawn.identity(identity);
    }
    let (pid, watch) = match boot.node.spawn_watched(&host, spawn) {
        Ok(x) => x,
        Err(e) => return fail(format!("cannot start {target}: {e}")),
    };
    let (tx, done) = crossbeam_channel::bounded(1);
    let _ = std::thread::Builder::new().name("terminal".into()).spawn(move || {
        let _ = tx.send(watch.wait());
    });
    let mut asked = None;
    let result = crossbeam_channel::select! {
        recv(done) -> r => r,
        recv(exit) -> code => {
            asked = code.ok();
            let _ = boot.node.cancel(pid, "system exit");
            match done.recv_timeout(shutdown) {
                Ok(r) => Ok(r),
                Err(_) => {
                    let _ = boot.node.terminate(pid);
                    done.recv()
                }
            }
        }
        recv(stop) -> _ => {
            let _ = boot.node.cancel(pid, "interrupted");
            match done.recv_timeout(shutdown) {
                Ok(r) => Ok(r),
                Err(_) => {
                    tracing::warn!(pid = %pid, timeout = ?shutdown, "the terminal process did not end in time (shutdown.timeout); terminating it");
                    let _ = boot.node.terminate(pid);
                    done.recv()
                }
            }
        }
    };
    let result = result.unwrap_or_else(|_| Err(wippy_runtime::Error::internal("the terminal process vanished")));
    if let Some(code) = asked {
        return code.clamp(0, 255) as u8;
    }
    if let Err(e) = &result {
        eprintln!("error: {e}");
    }
    exit_code(&result)
}

fn list_commands(plan: &Plan) {
    if plan.commands.is_empty() {
        println!("no commands (give a process.lua entry meta.command: {{name, short}})");
        return;
    }
    // Wippy's layout (its CLI tutorial shows it)
    let width = plan.commands.iter().map(|c| c.name.len()).max().unwrap_or(0);
    println!("Available commands:\n");
    for c in &plan.commands {
        println!("  {:width$}  {}  ({})", c.name, c.short, c.entry);
    }
    println!("\nRun with: wippy run <command>");
}

pub fn test(cli: &Cli, filters: &[String], host: Option<&str>, timeout: &str) -> u8 {
    let timeout = match parse_duration(timeout) {
        Ok(n) if n > 0 => Duration::from_nanos(n as u64),
        _ => return fail(format!("--timeout: invalid duration {timeout:?}")),
    };
    let (project, plan, config) = match load(cli) {
        Ok(x) => x,
        Err(code) => return code,
    };
    if let Err(e) = crate::boot::select_terminal(&plan, host) {
        return fail(e);
    }
    init_logging(cli, &config, terminal_hides_logs(&plan, host), false);
    warn_all(&plan);
    let signals = match signals::install() {
        Ok(s) => s,
        Err(e) => return fail(format!("cannot install signal handlers: {e}")),
    };
    let stop = signals.stop;
    let mut tests: Vec<(String, i64, EntryId)> = plan
        .tests
        .iter()
        .filter(|t| filters.is_empty() || filters.iter().any(|f| t.id.as_str().contains(f.as_str()) || t.suite.contains(f.as_str())))
        .map(|t| (t.suite.clone(), t.order, t.id.clone()))
        .collect();
    tests.sort();
    let cluster = match crate::cluster::settings(&config, None, None) {
        Ok(c) => c,
        Err(e) => return fail(e),
    };
    let boot = match Boot::new(&project, plan, strict_mode(&config), cluster) {
        Ok(b) => b,
        Err(e) => return fail(e),
    };
    boot.start();
    let host = match boot.start_terminal(host) {
        Ok(h) => h,
        Err(e) => {
            boot.shutdown();
            return fail(e);
        }
    };
    let (mut passed, mut failed) = (0, 0);
    let mut suite = None;
    for (s, _, id) in &tests {
        if stop.try_recv().is_ok() {
            println!("interrupted");
            failed += 1;
            break;
        }
        if suite.as_ref() != Some(s) {
            println!("{s}");
            suite = Some(s.clone());
        }
        let started = Instant::now();
        let outcome = run_test(&boot, &host, id, timeout);
        let took = started.elapsed();
        match outcome {
            Ok(()) => {
                passed += 1;
                println!("  PASS {id} ({took:.1?})");
            }
            Err(why) => {
                failed += 1;
                println!("  FAIL {id} ({took:.1?})");
                for line in why.lines() {
                    println!("       {line}");
                }
            }
        }
    }
    println!("{passed} passed, {failed} failed");
    boot.shutdown();
    if failed > 0 {
        FAILURE
    } else {
        0
    }
}

/// A test fails if it raises, returns false, or returns a non-nil error second value
/// (which the exit rules make an abnormal exit).
fn run_test(boot: &Boot, host: &str, id: &EntryId, timeout: Duration) -> Result<(), String> {
    let (pid, watch) = boot.node.spawn_watched(host, Spawn::entry(id.as_str())).map_err(|e| e.to_string())?;
    let result = match watch.wait_timeout(timeout) {
        Some(r) => r,
        None => {
            let _ = boot.node.terminate(pid);
            let _ = watch.wait_timeout(Duration::from_secs(5));
            return Err(format!("timed out after {timeout:?}"));
        }
    };
    match result {
        Ok(Value::Bool(false)) => Err("returned false".into()),
        Ok(_) => Ok(()),
        Err(e) => Err(e.to_string()),
    }
}

const INIT_LOCK: &str = "directories:\n  src: ./src\n  modules: .wippy\n";

const INIT_INDEX: &str = r#"version: "1.0"
namespace: app

entries:
  # Where long-running processes run.
  - name: processes
    kind: process.host
    host:
      workers: 4
    lifecycle:
      auto_start: true

  # wippy run hello   (or: wippy run -x app:hello)
  - name: hello
    kind: process.lua
    meta:
      command:
        name: hello
        short: Say hello
    source: file://hello.lua
    method: main
    modules: [io]
"#;

const INIT_HELLO: &str = r#"local function main()
    io.print("hello from " .. process.pid())
    return 0
end

return { main = main }
"#;

pub fn init(cli: &Cli) -> u8 {
    let dir = &cli.dir;
    // Wippy's tutorials write src/ first and then run `wippy init` for the lock file: an
    // existing project gets what it lacks of wippy.lock, and its sources are never touched.
    let starter: &[(&str, &str)] = &[("src/_index.yaml", INIT_INDEX), ("src/hello.lua", INIT_HELLO)];
    let mut files: Vec<(&str, &str)> = Vec::new();
    if !dir.join("wippy.lock").exists() {
        files.push(("wippy.lock", INIT_LOCK));
    }
    let existing = dir.join("src/_index.yaml").exists();
    if !existing {
        if let Some((name, _)) = starter.iter().find(|(name, _)| dir.join(name).exists()) {
            return fail(format!("{} already exists (and src/_index.yaml does not): init would overwrite it", dir.join(name).display()));
        }
        files.extend_from_slice(starter);
    }
    if files.is_empty() {
        println!("{} is already a project (wippy.lock and src/_index.yaml exist); nothing written", dir.display());
        return 0;
    }
    for (name, text) in &files {
        let path = dir.join(name);
        if let Some(parent) = path.parent() {
            if let Err(e) = std::fs::create_dir_all(parent) {
                return fail(format!("cannot create {}: {e}", parent.display()));
            }
        }
        if let Err(e) = std::fs::write(&path, text) {
            return fail(format!("cannot write {}: {e}", path.display()));
        }
        println!("wrote {}", path.display());
    }
    if existing {
        println!("run it: wippy run -d {}", dir.display());
    } else {
        println!("run it: wippy run -d {} hello", dir.display());
    }
    0
}

/// One `--meta` filter of `registry list` (Wippy's operators).
enum MetaTest {
    Equal(String),
    Regex(regex::Regex),
    Contains(String),
    Prefix(String),
    Suffix(String),
}

/// `field<op>value`: the field (dotted into mappings) and its test; the operator is the
/// first of `= ~ * ^ $` in the text.
fn meta_filter(text: &str) -> Result<(Vec<String>, MetaTest), String> {
    let at = text.find(['=', '~', '*', '^', '$']).ok_or("expected FIELD followed by =, ~, *, ^ or $ and a value")?;
    let (field, rest) = text.split_at(at);
    if field.is_empty() || field.split('.').any(str::is_empty) {
        return Err("the field name is missing".into());
    }
    let value = rest[1..].to_string();
    let test = match &rest[..1] {
        "=" => MetaTest::Equal(value),
        "~" => MetaTest::Regex(regex::Regex::new(&value).map_err(|e| e.to_string())?),
        "*" => MetaTest::Contains(value),
        "^" => MetaTest::Prefix(value),
        _ => MetaTest::Suffix(value),
    };
    Ok((field.split('.').map(String::from).collect(), test))
}

impl MetaTest {
    /// Whether an entry's meta field `v` passes (a missing field never does; a value that
    /// is not a string is compared as its JSON text).
    fn passes(&self, v: Option<&serde_json::Value>) -> bool {
        let Some(v) = v else { return false };
        let text = match v {
            serde_json::Value::String(s) => s.clone(),
            other => other.to_string(),
        };
        match self {
            MetaTest::Equal(want) => text == *want,
            MetaTest::Regex(r) => r.is_match(&text),
            MetaTest::Contains(s) => text.contains(s.as_str()),
            MetaTest::Prefix(s) => text.starts_with(s.as_str()),
            MetaTest::Suffix(s) => text.ends_with(s.as_str()),
        }
    }
}

pub fn registry_list(cli: &Cli, kind: Option<&str>, ns: Option<&str>, name: Option<&str>, meta: &[String], format: crate::Format) -> u8 {
    let glob = |what: &str, p: Option<&str>| -> Result<Option<glob::Pattern>, u8> {
        p.map(|p| glob::Pattern::new(p).map_err(|e| fail(format!("--{what} {p:?}: {e}")))).transpose()
    };
    let (kind, name) = match (glob("kind", kind), glob("name", name)) {
        (Ok(k), Ok(n)) => (k, n),
        (Err(code), _) | (_, Err(code)) => return code,
    };
    // a namespace with a glob character is a pattern; else it and the namespaces below it
    let ns_glob = match glob("ns", ns.filter(|n| n.contains(['*', '?', '[']))) {
        Ok(g) => g,
        Err(code) => return code,
    };
    let mut filters = Vec::new();
    for m in meta {
        match meta_filter(m) {
            Ok(f) => filters.push(f),
            Err(e) => return fail(format!("--meta {m:?}: {e}")),
        }
    }
    let (project, _, _) = match load(cli) {
        Ok(x) => x,
        Err(code) => return code,
    };
    let registry = wippy_registry::Registry::new(project.entries);
    let snapshot = registry.snapshot();
    let in_ns = |n: &str| match &ns_glob {
        Some(g) => g.matches(n),
        None => ns.is_none_or(|want| n == want || n.strip_prefix(want).is_some_and(|r| r.starts_with('.'))),
    };
    let meta_ok = |e: &wippy_registry::Entry| {
        filters.iter().all(|(path, test)| {
            let mut v = e.meta.get(&path[0]);
            for p in &path[1..] {
                v = v.and_then(|v| v.get(p.as_str()));
            }
            test.passes(v)
        })
    };
    let mut rows: Vec<_> = snapshot
        .entries()
        .filter(|e| kind.as_ref().is_none_or(|k| k.matches(&e.kind)) && name.as_ref().is_none_or(|n| n.matches(e.id.name())))
        .filter(|e| in_ns(e.id.namespace()) && meta_ok(e))
        .collect();
    rows.sort_by(|a, b| a.id.cmp(&b.id));
    if format.json || format.yaml {
        let list: Vec<serde_json::Value> = rows
            .iter()
            .map(|e| serde_json::json!({ "id": e.id.as_str(), "kind": e.kind, "file": e.origin.file, "line": e.origin.line }))
            .collect();
        return print_as(&serde_json::Value::Array(list), format);
    }
    let width = rows.iter().map(|e| e.id.as_str().len()).max().unwrap_or(2).max(2);
    let kwidth = rows.iter().map(|e| e.kind.len()).max().unwrap_or(4).max(4);
    println!("{:width$}  {:kwidth$}  DEFINED IN", "ID", "KIND");
    for e in &rows {
        println!("{:width$}  {:kwidth$}  {}:{}", e.id.as_str(), e.kind, e.origin.file, e.origin.line);
    }
    println!("{} entries", rows.len());
    0
}

/// `registry show ID`: one entry as YAML (or JSON): where it is defined, its source file,
/// meta and fields.
pub fn registry_show(cli: &Cli, id: &str, format: crate::Format) -> u8 {
    let (project, _, _) = match load(cli) {
        Ok(x) => x,
        Err(code) => return code,
    };
    let Some(e) = project.entries.iter().find(|e| e.id.as_str() == id) else {
        return fail(format!("registry show: no entry {id:?}"));
    };
    #[derive(serde::Serialize)]
    struct Shown<'a> {
        id: &'a str,
        kind: &'a str,
        defined_in: String,
        #[serde(skip_serializing_if = "Option::is_none")]
        source_file: Option<&'a str>,
        #[serde(skip_serializing_if = "serde_json::Map::is_empty")]
        meta: &'a serde_json::Map<String, serde_json::Value>,
        #[serde(flatten)]
        fields: &'a serde_json::Map<String, serde_json::Value>,
    }
    let shown = Shown {
        id: e.id.as_str(),
        kind: &e.kind,
        defined_in: format!("{}:{}", e.origin.file, e.origin.line),
        source_file: e.source.as_ref().filter(|s| s.path.is_some()).map(|s| s.name.as_str()),
        meta: &e.meta,
        fields: &e.fields,
    };
    print_as(&shown, crate::Format { json: format.json, yaml: !format.json })
}

fn print_as<T: serde::Serialize>(v: &T, format: crate::Format) -> u8 {
    let text = if format.json {
        serde_json::to_string_pretty(v).map_err(|e| e.to_string())
    } else {
        serde_saphyr::to_string(v).map_err(|e| e.to_string())
    };
    match text {
        Ok(t) => {
            println!("{}", t.trim_end());
            0
        }
        Err(e) => fail(format!("cannot write the output: {e}")),
    }
}

/// `wippy lint`: the load checks (every error is reported), then `wippy_lua::lint` on every
/// Lua entry. Findings print as `file:line: severity: entry: message`, or with `--json` as
/// one array of `{file, line, entry, field, severity, message}`.
pub fn lint(cli: &Cli, json: bool) -> u8 {
    #[derive(serde::Serialize)]
    struct Out {
        file: Option<String>,
        line: Option<u64>,
        entry: Option<String>,
        field: Option<String>,
        severity: &'static str,
        message: String,
    }
    let mut out: Vec<Out> = Vec::new();
    let load_error = |e: &wippy_registry::LoadError| Out {
        file: e.file.clone(),
        line: e.line,
        entry: e.entry.clone(),
        field: e.field.clone(),
        severity: "error",
        message: e.message.clone(),
    };
    match Config::load(&cli.dir, &cli.configs, &cli.sets) {
        Ok(_) => {}
        Err(e) => out.push(load_error(&e)),
    }
    let plan = Project::load(&cli.dir).map_err(|e| e.0).and_then(|p| Plan::build(&p).map_err(|e| e.0));
    match plan {
        Err(errors) => out.extend(errors.iter().map(load_error)),
        Ok(plan) => {
            for w in &plan.warnings {
                out.push(Out { severity: "warning", ..load_error(w) });
            }
            let modules = match wippy_lua::lint::Modules::of_runtime() {
                Ok(m) => m,
                Err(e) => return fail(format!("lint: cannot read the runtime's modules: {e}")),
            };
            for e in &plan.lua {
                let findings = match wippy_lua::lint::lint(e, &modules) {
                    Ok(f) => f,
                    Err(_) => continue, // does not compile: Plan::build reported it
                };
                for f in findings {
                    out.push(Out {
                        file: Some(e.chunk_name.clone()),
                        line: Some(f.line as u64),
                        entry: Some(e.id.clone()),
                        field: None,
                        severity: match f.severity {
                            wippy_lua::lint::Severity::Error => "error",
                            wippy_lua::lint::Severity::Warning => "warning",
                        },
                        message: f.message,
                    });
                }
            }
        }
    }
    let errors = out.iter().filter(|o| o.severity == "error").count();
    if json {
        match serde_json::to_string_pretty(&out) {
            Ok(t) => println!("{t}"),
            Err(e) => return fail(e),
        }
    } else {
        for o in &out {
            let at = match (&o.file, o.line) {
                (Some(f), Some(l)) => format!("{f}:{l}: "),
                (Some(f), None) => format!("{f}: "),
                _ => String::new(),
            };
            let entry = o.entry.as_ref().map(|e| format!("{e}: ")).unwrap_or_default();
            let field = o.field.as_ref().map(|f| format!("field {f}: ")).unwrap_or_default();
            println!("{at}{}: {entry}{field}{}", o.severity, o.message);
        }
        println!("{errors} errors, {} warnings", out.len() - errors);
    }
    if errors > 0 {
        FAILURE
    } else {
        0
    }
}

/// `wippy ps`: the running node's processes.
pub fn ps(cli: &Cli, host: Option<&str>, by: crate::control::Sort, json: bool) -> u8 {
    let answer = crate::control::Client::connect(&cli.dir).and_then(|mut c| c.call(serde_json::json!({ "cmd": "ps", "host": host })));
    let v = match answer {
        Ok(v) => v,
        Err(e) => return fail(e),
    };
    let mut procs: Vec<crate::control::Proc> = match serde_json::from_value(v["processes"].clone()) {
        Ok(p) => p,
        Err(e) => return fail(format!("bad answer from the node: {e}")),
    };
    crate::control::sort(&mut procs, by);
    if json {
        println!("{}", serde_json::to_string_pretty(&procs).unwrap_or_default());
    } else {
        print!("{}", crate::control::ps_table(&procs));
        println!("(memory marked ~ is a share of a Lua VM other processes use too; unmarked is the process's own)");
    }
    0
}

/// `wippy inspect PID`.
pub fn inspect(cli: &Cli, pid: &str, json: bool) -> u8 {
    let answer = crate::control::Client::connect(&cli.dir).and_then(|mut c| c.call(serde_json::json!({ "cmd": "inspect", "pid": pid })));
    let v = match answer {
        Ok(v) => v,
        Err(e) => return fail(e),
    };
    let d: crate::control::Detail = match serde_json::from_value(v["process"].clone()) {
        Ok(d) => d,
        Err(e) => return fail(format!("bad answer from the node: {e}")),
    };
    if json {
        println!("{}", serde_json::to_string_pretty(&d).unwrap_or_default());
        return 0;
    }
    let p = &d.proc;
    let list = |v: &[String]| if v.is_empty() { "-".to_string() } else { v.join(", ") };
    println!("pid          {}", p.pid);
    println!("entry        {}{}", p.entry.as_deref().unwrap_or("-"), d.entry_version.map(|v| format!(" (version {v})")).unwrap_or_default());
    println!("host         {}", p.host);
    println!("state        {}", p.state);
    println!("mailbox      {} messages, {} bytes", p.mailbox, p.mailbox_bytes);
    println!("memory       {}{}", crate::control::bytes(p.memory as u64), if p.memory_exact { " (its own VM)" } else { " (its share of a shared VM)" });
    println!("steps        {}", p.steps);
    println!("age          {}", crate::control::age(p.age_ms));
    println!("names        {}", list(&p.names));
    println!("actor        {}", p.actor.as_deref().unwrap_or("-"));
    println!("links        {}", list(&d.links));
    println!("monitors     {}", list(&d.monitors));
    println!("monitoring   {}", list(&d.monitoring));
    println!("trap_links   {}", d.trap_links);
    println!("pending      {} commands (timers, calls)", d.pending_commands);
    println!("service      {}", d.service.as_deref().unwrap_or("-"));
    println!("last error   {}", d.last_error.as_deref().unwrap_or("-"));
    0
}

/// `wippy top`.
pub fn top(cli: &Cli, by: crate::control::Sort, interval: f64, once: bool) -> u8 {
    if !(interval.is_finite() && interval >= 0.1) {
        return fail("--interval: at least 0.1 seconds");
    }
    if once {
        return match crate::top::once(&cli.dir, by, Duration::from_secs_f64(interval), 110) {
            Ok(text) => {
                print!("{text}");
                0
            }
            Err(e) => fail(e),
        };
    }
    match crate::top::run(&cli.dir, by, Duration::from_secs_f64(interval)) {
        Ok(()) => 0,
        Err(e) => fail(e),
    }
}
