//! End-to-end: the real `wippy` binary on every example in examples/, on `wippy test`
//! over a fixture suite, on `wippy init`, and on signals. Long-running examples are read
//! until their output shows they work (bounded by a deadline), then stopped with SIGINT.

mod common;

use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

use common::Running;

fn repo() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../..").canonicalize().unwrap()
}

fn wippy(args: &[&str]) -> Command {
    let mut c = Command::new(env!("CARGO_BIN_EXE_wippy"));
    c.current_dir(repo()).args(args);
    c
}

/// Run to completion, with an upper bound.
fn run(args: &[&str]) -> Output {
    let mut child = wippy(args).stdout(Stdio::piped()).stderr(Stdio::piped()).spawn().unwrap();
    let deadline = Instant::now() + Duration::from_secs(120);
    loop {
        if child.try_wait().unwrap().is_some() {
            return child.wait_with_output().unwrap();
        }
        if Instant::now() > deadline {
            child.kill().unwrap();
            panic!("wippy {args:?} did not finish within 120s");
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

fn stdout(o: &Output) -> String {
    String::from_utf8_lossy(&o.stdout).to_string()
}

fn assert_ok(o: &Output) {
    assert_eq!(o.status.code(), Some(0), "stdout:\n{}\nstderr:\n{}", stdout(o), String::from_utf8_lossy(&o.stderr));
}

/// A long-running `wippy` with these arguments and environment.
fn start(args: &[&str], env: &[(&str, &str)]) -> Running {
    let mut cmd = wippy(args);
    for (k, v) in env {
        cmd.env(k, v);
    }
    Running::spawn(cmd)
}

#[test]
fn hello_prints_its_pid_by_command_name_and_by_id() {
    let o = run(&["run", "-d", "examples/hello", "hello", "Bob"]);
    assert_ok(&o);
    let out = stdout(&o);
    assert!(out.starts_with("hello, Bob! I am process {app:terminal|0x"), "{out}");
    assert!(out.contains("args: Bob\n"), "{out}");
    let o = run(&["run", "-d", "examples/hello", "-x", "app:hello"]);
    assert_ok(&o);
    assert!(stdout(&o).starts_with("hello, world! I am process {app:terminal|0x0000"), "{}", stdout(&o));
    let o = run(&["run", "-d", "examples/hello", "list"]);
    // flags after `list` are the run's (list takes no arguments)
    assert_eq!(stdout(&run(&["run", "list", "-d", "examples/hello"])), stdout(&o));
    assert_eq!(stdout(&o), "Available commands:\n\n  hello  Print a greeting and this process's PID  (app:hello)\n\nRun with: wippy run <command>\n");
}

#[test]
fn worker_pool_collects_every_result() {
    let o = run(&["run", "-d", "examples/worker-pool", "pool", "4", "20"]);
    assert_ok(&o);
    let out = stdout(&o);
    for i in 1..=4 {
        assert!(out.contains(&format!("worker {i} ({{app:processes|0x")), "{out}");
    }
    assert_eq!(out.matches("did 5 jobs").count(), 4, "{out}");
    assert!(out.contains("20 jobs on 4 workers: 25188 primes in total"), "{out}");
}

#[test]
fn supervisor_restarts_the_crashing_worker_until_done() {
    let o = run(&["run", "-d", "examples/supervisor", "supervise", "12"]);
    assert_ok(&o);
    let out = stdout(&o);
    let last = out.lines().last().unwrap_or_default();
    let restarts: usize = last
        .strip_prefix("all 12 jobs done after ")
        .and_then(|r| r.strip_suffix(" restarts"))
        .unwrap_or_else(|| panic!("last line: {last}"))
        .parse()
        .unwrap();
    assert_eq!(out.matches("crashed at job").count(), restarts, "{out}");
}

#[test]
fn kv_server_answers_requests_by_name() {
    let o = run(&["run", "-d", "examples/kv-server", "kv"]);
    assert_ok(&o);
    assert_eq!(
        stdout(&o),
        "put color blue -> true\nput size 42 -> true\nget color -> blue\nget size -> 42\ndelete color -> blue\nget color -> nil\n"
    );
    let o = run(&["run", "-d", "examples/kv-server", "kv", "frob", "x"]);
    assert_eq!(o.status.code(), Some(1));
    assert_eq!(stdout(&o), "frob x -> error: unknown request frob\n");
}

#[test]
fn chat_room_broadcasts_joins_lines_and_leaves() {
    let o = run(&["run", "-d", "examples/chat-room", "chat"]);
    assert_ok(&o);
    let expected = "\
--- what carol saw
  * carol joined #lobby
  alice: hi all
  bob: hello alice
--- what bob saw
  * bob joined #lobby
  * carol joined #lobby
  alice: hi all
  bob: hello alice
  * carol left
  alice: bye carol
--- what alice saw
  * alice joined #lobby
  * bob joined #lobby
  * carol joined #lobby
  alice: hi all
  bob: hello alice
  * carol left
  alice: bye carol
  * bob left
";
    assert_eq!(stdout(&o), expected);
}

#[test]
fn pipeline_stages_parse_transform_and_aggregate() {
    let o = run(&["run", "-d", "examples/pipeline", "pipeline"]);
    assert_ok(&o);
    let expected = "\
apple    qty   14  total     6.50
fig      qty    1  total     2.00
pear     qty    6  total     4.30
rejected: line 5: cannot parse \"not a record\"
rejected: line 7: quantity -2 is not positive
6 records, 2 rejected, grand total 12.80
";
    assert_eq!(stdout(&o), expected);
}

#[test]
fn ping_pong_services_find_each_other_and_stop_on_sigint() {
    let mut r = start(&["run", "-d", "examples/ping-pong"], &[]);
    r.wait_for(&["service state", "app:pong_service", "Running"]);
    r.wait_for(&["ping-pong round", "round=3 "]);
    r.interrupt();
    assert_eq!(r.exit_code(), Some(0), "{}", r.seen.join("\n"));
    let all = r.seen.join("\n");
    assert!(all.contains("ping stopping") && all.contains("pong stopping"), "{all}");
    // Reverse dependency order: ping (which requires pong) stops first.
    let ping = all.find("service=app:ping_service state=Stopping").unwrap();
    let pong = all.find("service=app:pong_service state=Stopping").unwrap();
    assert!(ping < pong, "{all}");
}

#[test]
fn mass_spawn_reports_stats_for_n_workers_from_the_environment() {
    let mut r = start(&["run", "-d", "examples/mass-spawn"], &[("WORKERS", "1000")]);
    r.wait_for(&["workers spawned", "workers=1000"]);
    let stats = r.wait_for(&["stats", "workers=1000"]);
    assert!(!stats.contains("ticks=0 "), "{stats}");
    r.interrupt();
    assert_eq!(r.exit_code(), Some(0), "{}", r.seen.join("\n"));
}

#[test]
fn a_second_signal_exits_at_once_with_1() {
    let mut r = start(&["run", "-d", "crates/cli/tests/fixtures/stubborn"], &[]);
    r.wait_for(&["stubborn started"]);
    r.interrupt();
    r.wait_for(&["Stopping"]);
    r.interrupt();
    assert_eq!(r.exit_code(), Some(1));
}

#[test]
fn wippy_test_counts_passes_and_failures() {
    let suite = "crates/cli/tests/fixtures/suite";
    let o = run(&["test", "-d", suite]);
    assert_eq!(o.status.code(), Some(1));
    let out = stdout(&o);
    // Strip the timings: "  PASS id (1.2ms)" -> "  PASS id".
    let lines: Vec<String> = out.lines().map(|l| l.split(" (").next().unwrap_or(l).to_string()).collect();
    let expected = [
        "failures",
        "  FAIL suite:raises",
        "       boom",
        "  FAIL suite:returns_error",
        "       bad second value",
        "  FAIL suite:returns_false",
        "       returned false",
        "  PASS suite:uses_a_process",
        "math",
        "  PASS suite:multiplies",
        "  PASS suite:adds",
        "3 passed, 3 failed",
    ];
    assert_eq!(lines, expected, "{out}");
    let o = run(&["test", "-d", suite, "math"]);
    assert_ok(&o);
    assert!(stdout(&o).ends_with("\n2 passed, 0 failed\n"), "{}", stdout(&o));
}

#[test]
fn init_writes_a_project_that_runs() {
    let dir = std::env::temp_dir().join(format!("wippy-init-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    let d = dir.to_str().unwrap();
    assert_ok(&run(&["init", "-d", d]));
    assert!(dir.join("wippy.lock").is_file() && dir.join("src/_index.yaml").is_file());
    let o = run(&["run", "-d", d, "hello"]);
    assert_ok(&o);
    assert!(stdout(&o).starts_with("hello from {wippy:terminal|0x"), "{}", stdout(&o));
    let index = std::fs::read_to_string(dir.join("src/_index.yaml")).unwrap();
    std::fs::write(dir.join("src/hello.lua"), "-- edited\n").unwrap();
    let again = run(&["init", "-d", d]);
    assert_ok(&again);
    assert!(stdout(&again).contains("nothing written"), "{}", stdout(&again));
    assert_eq!(std::fs::read_to_string(dir.join("src/hello.lua")).unwrap(), "-- edited\n", "init must not overwrite");
    assert_eq!(std::fs::read_to_string(dir.join("src/_index.yaml")).unwrap(), index);
    // Wippy's tutorials write the sources, then `wippy init` for the lock file only
    std::fs::remove_file(dir.join("wippy.lock")).unwrap();
    let lock = run(&["init", "-d", d]);
    assert_ok(&lock);
    assert!(dir.join("wippy.lock").is_file() && stdout(&lock).contains("wippy.lock") && !stdout(&lock).contains("_index.yaml"), "{}", stdout(&lock));
    assert_eq!(std::fs::read_to_string(dir.join("src/hello.lua")).unwrap(), "-- edited\n");
    // no index but a hello.lua of the user's: refused rather than overwritten
    std::fs::remove_file(dir.join("src/_index.yaml")).unwrap();
    let clash = run(&["init", "-d", d]);
    assert_eq!(clash.status.code(), Some(1), "{}", stdout(&clash));
    assert_eq!(std::fs::read_to_string(dir.join("src/hello.lua")).unwrap(), "-- edited\n");
    std::fs::write(dir.join("src/_index.yaml"), &index).unwrap();
    let listed = stdout(&run(&["registry", "list", "-d", d, "--kind", "process.lua"]));
    assert!(listed.contains("app:hello") && !listed.contains("app:processes"), "{listed}");
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn services_start_in_order_restart_with_growing_delays_and_stop_in_reverse() {
    let mut r = start(&["run", "-d", "examples/services"], &[]);
    r.wait_for(&["SERVICE", "STATE", "ATTEMPT"]);
    r.wait_for(&["service=app:worker_service state=Failed attempt=1", "restart_in=100ms"]);
    r.wait_for(&["service=app:worker_service state=Failed attempt=2", "restart_in=200ms"]);
    r.wait_for(&["service=app:worker_service state=Failed attempt=3", "restart_in=400ms"]);
    // SIGUSR1 prints the table again.
    r.signal(libc::SIGUSR1);
    r.wait_for(&["SERVICE", "STATE", "ATTEMPT"]);
    r.wait_for(&["app:db_service", "Running"]);
    r.interrupt();
    assert_eq!(r.exit_code(), Some(0), "{}", r.seen.join("\n"));
    let all = r.seen.join("\n");
    let at = |s: &str| all.find(s).unwrap_or_else(|| panic!("no {s:?} in\n{all}"));
    // Start: host, then db, then cache (requires db), then worker (depends on cache).
    assert!(at("service=app:processes state=Running") < at("service=app:db_service state=Starting"));
    assert!(at("service=app:db_service state=Running") < at("service=app:cache_service state=Starting"));
    assert!(at("service=app:cache_service state=Running") < at("service=app:worker_service state=Starting"));
    // Stop: the reverse.
    assert!(at("service=app:worker_service state=Stopped") < at("service=app:cache_service state=Stopping"));
    assert!(at("service=app:cache_service state=Stopped") < at("service=app:db_service state=Stopping"));
    assert!(at("service=app:db_service state=Stopped") < at("service=app:processes state=Stopping"));
    assert!(all.contains("shutdown: 4 services stopped, 0 processes terminated"), "{all}");
}

#[test]
fn multi_tenant_policies_allow_own_org_and_gateway_and_deny_the_rest() {
    let o = run(&["run", "-d", "examples/multi-tenant", "demo"]);
    assert_ok(&o);
    let out = stdout(&o);
    let expected = include_str!("fixtures/multi-tenant.out");
    assert_eq!(out, expected);
}

/// A fresh copy of examples/hot-upgrade in a temp directory named `name`-PID, to edit
/// under `--watch`.
fn hot_upgrade_copy(name: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(dir.join("src")).unwrap();
    for f in ["_index.yaml", "counter.lua"] {
        std::fs::copy(repo().join("examples/hot-upgrade/src").join(f), dir.join("src").join(f)).unwrap();
    }
    dir
}

#[test]
fn hot_upgrade_under_watch_keeps_pid_and_count_and_refuses_a_broken_edit() {
    let dir = hot_upgrade_copy("wippy-hot");
    let lua = dir.join("src/counter.lua");
    let mut r = start(&["run", "--watch", "-d", dir.to_str().unwrap()], &[]);
    let first = r.wait_for(&["tick", "count=2 ", "version=v1"]);
    let pid = first.split("pid=").nth(1).unwrap().split(' ').next().unwrap().to_string();
    let edit = |from: &str, to: &str| {
        let text = std::fs::read_to_string(&lua).unwrap();
        std::fs::write(&lua, text.replace(from, to)).unwrap();
    };
    edit("local LABEL = \"v1\"", "local LABEL = \"v2\"");
    let upgraded = r.wait_for(&["counter running", "version=v2"]);
    assert!(upgraded.contains(&format!("pid={pid} ")), "same PID after the upgrade: {upgraded}");
    let count: u32 = upgraded.split("count=").nth(1).unwrap().split(' ').next().unwrap().parse().unwrap();
    assert!(count >= 2, "the count survived: {upgraded}");
    r.saw_or_wait(&["watch: registry changed", "changed=app:counter"]);
    // A host's worker count changes in place.
    let index = dir.join("src/_index.yaml");
    let yaml = std::fs::read_to_string(&index).unwrap();
    std::fs::write(&index, yaml.replace("workers: 1", "workers: 2")).unwrap();
    r.wait_for(&["host rescaled", "host=app:processes", "workers=2"]);
    // A broken edit is refused; the running code goes on.
    edit("local LABEL = \"v2\"", "local LABEL = \"v3\" +");
    r.wait_for(&["src/counter.lua:", "(nothing changed)"]);
    r.wait_for(&["tick", "version=v2", &format!("pid={pid} ")]);
    r.interrupt();
    assert_eq!(r.exit_code(), Some(0), "{}", r.seen.join("\n"));
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn overrides_are_kept_when_watch_reloads_the_files() {
    let dir = hot_upgrade_copy("wippy-override-watch");
    // the files say workers: 1; the override says 2, and a reload must not take it back
    let mut r = start(&["run", "--watch", "-d", dir.to_str().unwrap(), "-o", "app:processes:host.workers=2"], &[]);
    r.wait_for(&["tick", "version=v1"]);
    let lua = dir.join("src/counter.lua");
    let text = std::fs::read_to_string(&lua).unwrap();
    std::fs::write(&lua, text.replace("local LABEL = \"v1\"", "local LABEL = \"v2\"")).unwrap();
    let changed = r.wait_for(&["watch: registry changed"]);
    assert!(changed.contains("changed=app:counter") && !changed.contains("app:processes"), "{changed}");
    r.wait_for(&["tick", "version=v2"]);
    assert!(!r.seen.iter().any(|l| l.contains("host rescaled")), "{}", r.seen.join("\n"));
    r.interrupt();
    assert_eq!(r.exit_code(), Some(0), "{}", r.seen.join("\n"));
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn registry_transactions_from_lua_are_atomic_validated_and_roll_back() {
    let o = run(&["test", "-d", "crates/cli/tests/fixtures/registry-tx"]);
    assert_ok(&o);
    assert!(stdout(&o).ends_with("\n5 passed, 0 failed\n"), "{}", stdout(&o));
}

#[test]
fn the_attack_suite_fails_every_attack_through_the_binary() {
    let marker = Path::new("/tmp/wippy-attack-pwned");
    let _ = std::fs::remove_file(marker);
    let o = run(&["test", "-d", "crates/cli/tests/fixtures/attacks"]);
    assert_ok(&o);
    assert!(stdout(&o).ends_with("\n1 passed, 0 failed\n"), "{}", stdout(&o));
    assert!(!marker.exists(), "a command ran from an escaped source");
    // the same source as a file stops the node at load (fixture bad/loader-escape)
    let o = run(&["run", "-d", "crates/cli/tests/fixtures/bad/loader-escape", "-x", "app:escape"]);
    assert_eq!(o.status.code(), Some(1));
    assert!(!marker.exists(), "a command ran from an escaped source");
}

#[test]
fn one_ctrl_c_always_ends_the_node_and_independent_services_stop_together() {
    let dir = "crates/cli/tests/fixtures/shutdown";
    let mut r = start(&["run", "-d", dir, "--set", "shutdown.timeout=1s", "--set", "logger.level=info", "forever"], &[]);
    r.wait_for(&["forever started"]);
    r.saw_or_wait(&["stubborn started", "name=a "]);
    r.saw_or_wait(&["stubborn started", "name=b "]);
    r.interrupt();
    // the command ignores CANCEL: terminated after shutdown.timeout, exit 1
    assert_eq!(r.exit_code(), Some(1), "{}", r.seen.join("\n"));
    let seen = r.seen.join("\n");
    assert!(seen.contains("the terminal process did not end in time (shutdown.timeout); terminating it"), "{seen}");
    // both services were asked to stop before either was terminated
    let pos = |parts: &[&str]| r.seen.iter().position(|l| parts.iter().all(|p| l.contains(p)));
    let stopping_a = pos(&["service=app:stubborn_a", "state=Stopping"]).expect("a stopping");
    let stopping_b = pos(&["service=app:stubborn_b", "state=Stopping"]).expect("b stopping");
    let first_kill = pos(&["did not stop in time; terminating it"]).expect("a service terminated");
    assert!(stopping_a < first_kill && stopping_b < first_kill, "{seen}");
}

#[test]
fn a_bad_shutdown_timeout_is_refused_before_anything_starts() {
    let o = run(&["run", "-d", "crates/cli/tests/fixtures/shutdown", "--set", "shutdown.timeout=soon", "forever"]);
    assert_eq!(o.status.code(), Some(1));
    let err = String::from_utf8_lossy(&o.stderr).to_string();
    assert!(err.contains("error: --set: configuration key shutdown.timeout: invalid value \"soon\" (expected a duration"), "{err}");
    assert!(o.stdout.is_empty(), "nothing started");
}

#[test]
fn configuration_keys_are_checked_and_logging_follows_level_encoding_and_rust_log() {
    let dir = std::env::temp_dir().join(format!("wippy-config-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(dir.join("src")).unwrap();
    std::fs::write(
        dir.join("src/_index.yaml"),
        "namespace: app\nentries:\n  - name: hi\n    kind: process.lua\n    modules: [logger]\n    \
         source: \"return { main = function() logger:info('info line') logger:warn('warn line') return 0 end }\"\n",
    )
    .unwrap();
    let d = dir.to_str().unwrap();
    // an unknown key is a warning with file:line; a bad value an error, and nothing starts
    std::fs::write(dir.join(".wippy.yaml"), "logger:\n  level: warning\n  levl: debug\n").unwrap();
    let o = run(&["run", "-d", d, "-x", "app:hi"]);
    assert_ok(&o);
    let err = String::from_utf8_lossy(&o.stderr).to_string();
    assert!(err.contains("warning: .wippy.yaml:3: unknown configuration key logger.levl"), "{err}");
    assert!(err.contains("warn line") && !err.contains("info line"), "logger.level: warning: {err}");
    std::fs::write(dir.join(".wippy.yaml"), "logger:\n  level: loud\n").unwrap();
    let o = run(&["run", "-d", d, "-x", "app:hi"]);
    assert_eq!(o.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&o.stderr).contains("error: .wippy.yaml:2: configuration key logger.level: invalid value \"loud\""));
    // json lines
    std::fs::write(dir.join(".wippy.yaml"), "logger:\n  encoding: json\n").unwrap();
    let o = run(&["run", "-d", d, "-x", "app:hi"]);
    assert_ok(&o);
    let err = String::from_utf8_lossy(&o.stderr).to_string();
    let line = err.lines().find(|l| l.contains("warn line")).expect("the warn line");
    let v: serde_json::Value = serde_json::from_str(line).expect("a JSON log line");
    assert_eq!(v["level"].as_str(), Some("WARN"), "{line}");
    // RUST_LOG wins over logger.level
    std::fs::write(dir.join(".wippy.yaml"), "logger:\n  level: info\n").unwrap();
    let o = wippy(&["run", "-d", d, "-x", "app:hi"]).env("RUST_LOG", "error").output().unwrap();
    let err = String::from_utf8_lossy(&o.stderr).to_string();
    assert!(!err.contains("warn line") && !err.contains("info line"), "{err}");
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn registry_list_takes_globs_and_writes_json_and_show_prints_one_entry() {
    let d = "examples/services";
    let o = run(&["registry", "list", "-d", d, "--kind", "process.*", "--json"]);
    assert_ok(&o);
    let rows: serde_json::Value = serde_json::from_slice(&o.stdout).expect("JSON");
    let ids: Vec<&str> = rows.as_array().unwrap().iter().map(|r| r["id"].as_str().unwrap()).collect();
    assert!(ids.contains(&"app:processes") && ids.contains(&"app:cache") && ids.contains(&"app:cache_service"), "{ids:?}");
    assert!(rows.as_array().unwrap().iter().all(|r| r["kind"].as_str().unwrap().starts_with("process.") && r["line"].as_u64().is_some()));
    let o = run(&["registry", "list", "-d", d, "--name", "*_service", "--yaml"]);
    assert_ok(&o);
    let listed = stdout(&o);
    assert!(listed.contains("id: app:cache_service") && !listed.contains("id: app:cache\n"), "{listed}");
    let o = run(&["registry", "show", "-d", d, "app:cache", "--json"]);
    assert_ok(&o);
    let e: serde_json::Value = serde_json::from_slice(&o.stdout).expect("JSON");
    assert_eq!((e["kind"].as_str(), e["source_file"].as_str()), (Some("process.lua"), Some("src/cache.lua")));
    assert!(e["defined_in"].as_str().unwrap().starts_with("src/_index.yaml:"));
    let o = run(&["registry", "show", "-d", d, "app:nope"]);
    assert_eq!(o.status.code(), Some(1));
    let o = run(&["registry", "list", "-d", d, "--kind", "["]);
    assert_eq!(o.status.code(), Some(1));
    // Wippy's --meta operators (all filters must pass) and short flags, a namespace glob
    let listed = |args: &[&str]| {
        let o = run(&[&["registry", "list", "-d", "examples/hello", "--json"], args].concat());
        assert_ok(&o);
        let rows: serde_json::Value = serde_json::from_slice(&o.stdout).expect("JSON");
        rows.as_array().unwrap().iter().map(|r| r["id"].as_str().unwrap().to_string()).collect::<Vec<_>>()
    };
    assert_eq!(listed(&["--meta", "command.name=hello"]), ["app:hello"]);
    assert_eq!(listed(&["--meta", "command.short~^Print a"]), ["app:hello"]);
    assert_eq!(listed(&["--meta", "command.short*greeting", "--meta", "command.name$llo", "-k", "process.*", "-n", "a*"]), ["app:hello"]);
    assert!(listed(&["--meta", "command.name^x"]).is_empty());
    assert!(listed(&["--meta", "command.name=hello", "-n", "other"]).is_empty());
    let o = run(&["registry", "list", "-d", "examples/hello", "--meta", "x~("]);
    assert!(o.status.code() == Some(1) && String::from_utf8_lossy(&o.stderr).contains("--meta \"x~(\""));
}

#[test]
fn lint_reports_what_it_finds_with_lines_and_exit_codes() {
    let o = run(&["lint", "-d", "crates/cli/tests/fixtures/lint"]);
    assert_eq!(o.status.code(), Some(1));
    assert_eq!(
        stdout(&o),
        "src/worker.lua:1: warning: app:worker: global 'counter' assigned at the top level (globals are per process; use a local)\n\
         src/worker.lua:9: error: app:worker: require 'json': not a module this entry lists in modules: nor an alias of its imports:\n\
         src/worker.lua:11: error: app:worker: process.spwan: the process module has no spwan\n\
         2 errors, 1 warnings\n"
    );
    let o = run(&["lint", "-d", "crates/cli/tests/fixtures/lint", "--json"]);
    assert_eq!(o.status.code(), Some(1));
    let v: serde_json::Value = serde_json::from_slice(&o.stdout).expect("JSON");
    let spwan = v.as_array().unwrap().iter().find(|f| f["message"].as_str().unwrap().contains("spwan")).expect("spwan");
    assert_eq!((spwan["file"].as_str(), spwan["line"].as_u64(), spwan["entry"].as_str()), (Some("src/worker.lua"), Some(11), Some("app:worker")));
    // load errors are lint errors too, with their file, line, entry and field
    let o = run(&["lint", "-d", "crates/cli/tests/fixtures/bad/loader-escape", "--json"]);
    assert_eq!(o.status.code(), Some(1));
    let v: serde_json::Value = serde_json::from_slice(&o.stdout).expect("JSON");
    assert!(v.as_array().unwrap().iter().any(|f| f["entry"] == "app:unknown_module" && f["field"] == "modules"), "{v}");
    // every example is clean
    for ex in ["hello", "chat-room", "worker-pool", "services", "multi-tenant"] {
        let o = run(&["lint", "-d", &format!("examples/{ex}")]);
        assert_ok(&o);
        assert!(stdout(&o).ends_with("0 errors, 0 warnings\n"), "{ex}: {}", stdout(&o));
    }
}

#[test]
fn env_storages_read_write_and_keep_the_file_between_runs() {
    let data = repo().join("examples/env/data");
    let _ = std::fs::remove_dir_all(&data);
    let o = run(&["run", "-d", "examples/env", "settings"]);
    assert_ok(&o);
    let out = stdout(&o);
    for line in ["app: env-demo in eu-west", "token before: none", "visits: 3", "token after: t-3", "is read-only", "NOPE: nil (NotFound)"] {
        assert!(out.contains(line), "{line}\n{out}");
    }
    assert_eq!(std::fs::read_to_string(data.join("app.env")).unwrap(), "TOKEN=t-3\n");
    // the file outlives the node; memory does not
    let o = run(&["run", "-d", "examples/env", "settings"]);
    assert_ok(&o);
    let out = stdout(&o);
    assert!(out.contains("token before: t-3") && out.contains("visits: 3"), "{out}");
    let _ = std::fs::remove_dir_all(&data);
}

#[test]
fn event_bus_delivers_to_every_matching_subscriber() {
    let o = run(&["run", "-d", "examples/event-bus", "shop"]);
    assert_ok(&o);
    let out = stdout(&o);
    assert!(out.contains("audit saw 4:\n  app.users created /users/7\n  app.orders created /orders/1\n  app.orders paid /orders/1\n  app.orders created /orders/2\n"), "{out}");
    assert!(out.contains("mailer saw 2:\n  mail to ada@example.com for order 1\n  mail to bob@example.com for order 2\n"), "{out}");
}

#[test]
fn dynamic_registry_changes_looks_back_and_rolls_back() {
    let o = run(&["run", "-d", "examples/dynamic-registry", "registry"]);
    assert_ok(&o);
    let out = stdout(&o);
    for line in [
        "loaded: registry.Version{id=0}",
        "applied: registry.Version{id=1}",
        "previous of it is the loaded one: true",
        "theme at registry.Version{id=0}: light",
        "delta entry.create app:flag_search",
        "rolled back: registry.Version{id=2}",
        "flags: 0",
        "versions: 3",
    ] {
        assert!(out.contains(line), "{line}\n{out}");
    }
}

#[test]
fn installed_dependencies_load_and_requirements_resolve() {
    let o = run(&["run", "-d", "crates/cli/tests/fixtures/deps", "-x", "app:show"]);
    assert_ok(&o);
    assert_eq!(stdout(&o), "word: bonjour\nother: fallback\ngreet: hello ada\n");
}

/// Wippy's own tutorials list always-present modules (`modules: [process, channel]`) and
/// run with `-x HOST/ENTRY`: both work as they do there.
#[test]
fn wippy_tutorial_forms_list_process_and_channel_and_run_x_host_slash_entry() {
    let dir = std::env::temp_dir().join(format!("wippy-tutorial-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(dir.join("src")).unwrap();
    std::fs::write(
        dir.join("src/_index.yaml"),
        r#"version: "1.0"
namespace: app
entries:
  - name: terminal
    kind: terminal.host
    lifecycle: {auto_start: true}
  - name: processes
    kind: process.host
    lifecycle: {auto_start: true}
  - name: cli
    kind: process.lua
    source: file://cli.lua
    method: main
    modules: [io, process, time, channel]
  - name: worker
    kind: process.lua
    source: file://worker.lua
    method: main
    modules: [process, time]
"#,
    )
    .unwrap();
    std::fs::write(
        dir.join("src/worker.lua"),
        r#"local process = require("process")
local function main(sender, data)
    process.send(sender, "echo_response", { data = string.upper(data) })
    return 0
end
return { main = main }
"#,
    )
    .unwrap();
    std::fs::write(
        dir.join("src/cli.lua"),
        r#"local io = require("io")
local process = require("process")
local time = require("time")
local channel = require("channel")
local function main()
    local inbox = process.inbox()
    process.spawn("app:worker", "app:processes", process.pid(), "hello")
    local timeout = time.after("5s")
    local r = channel.select { inbox:case_receive(), timeout:case_receive() }
    if r.channel == timeout then return 1 end
    io.print(r.value:payload():data().data .. " on " .. tostring(process.pid()))
    return 0
end
return { main = main }
"#,
    )
    .unwrap();
    let d = dir.to_str().unwrap();
    let o = run(&["run", "-d", d, "-x", "app:terminal/app:cli"]);
    assert_ok(&o);
    assert!(stdout(&o).starts_with("HELLO on {app:terminal|0x"), "{}", stdout(&o));
    let o = run(&["run", "-d", d, "--host", "app:terminal", "-x", "app:terminal/app:cli"]);
    assert_ok(&o);
    let o = run(&["run", "-d", d, "--host", "app:other", "-x", "app:terminal/app:cli"]);
    assert_eq!(o.status.code(), Some(1));
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(err.contains("names terminal host app:terminal, but --host says app:other"), "{err}");
    let o = run(&["run", "-d", d, "-x", "app:nowhere/app:cli"]);
    assert_eq!(o.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&o.stderr).contains("app:nowhere"), "{}", String::from_utf8_lossy(&o.stderr));
    std::fs::remove_dir_all(&dir).unwrap();
}

/// `io` on a terminal host reads stdin as Wippy's does: `readline` a line, `read(n)` what one
/// read gives (n <= 0 is 1024), nil at the end; `raw` without a terminal is an error value,
/// not a raise.
#[test]
fn terminal_io_reads_lines_and_bytes_from_stdin() {
    use std::io::Write;
    let dir = std::env::temp_dir().join(format!("wippy-stdin-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(dir.join("src")).unwrap();
    std::fs::write(dir.join("src/_index.yaml"), "version: \"1.0\"\nnamespace: app\nentries:\n  - name: cli\n    kind: process.lua\n    source: file://cli.lua\n    method: main\n    modules: [io]\n").unwrap();
    std::fs::write(
        dir.join("src/cli.lua"),
        r#"return { main = function()
    local line = io.readline()
    local rest = io.read(0)
    local eof = io.read(16)
    -- (true on a terminal, an error value without one; never a raise)
    local raw, err = io.raw(true)
    io.raw(false)
    io.print(line, rest, tostring(eof), tostring(raw == true or (err and err:kind() == errors.INTERNAL)))
    return 0
end }"#,
    )
    .unwrap();
    let mut child = wippy(&["run", "-d", dir.to_str().unwrap(), "-x", "app:cli"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    child.stdin.take().unwrap().write_all(b"first line\nthe rest").unwrap();
    let o = child.wait_with_output().unwrap();
    assert_ok(&o);
    assert_eq!(stdout(&o), "first line\tthe rest\tnil\ttrue\n");
    std::fs::remove_dir_all(&dir).unwrap();
}

/// Wippy's global flags load: `--console` and `--very-verbose` are `-c` and `-v`; its Go
/// runtime's `-m`, `-p` and `-e` are accepted and say they do nothing here.
#[test]
fn wippys_global_flags_are_accepted() {
    let o = run(&["run", "-d", "examples/hello", "--console", "--very-verbose", "-m", "1G", "-p", "-e", "-x", "app:hello"]);
    assert_ok(&o);
    assert!(stdout(&o).starts_with("hello, world!"), "{}", stdout(&o));
    let err = String::from_utf8_lossy(&o.stderr);
    for flag in ["--memory-limit", "--profiler", "--event-streams"] {
        assert!(err.contains(&format!("warning: {flag} is ")) && err.contains("no effect in this runtime"), "{flag}: {err}");
    }
}

#[test]
fn version_prints_the_version() {
    let o = run(&["version", "--short"]);
    assert_eq!(stdout(&o), format!("{}\n", env!("CARGO_PKG_VERSION")));
    assert!(stdout(&run(&["version"])).starts_with(&format!("wippy {} (", env!("CARGO_PKG_VERSION"))));
}

/// As in Wippy, two entries may name the same command: the first in registry order runs,
/// with a warning that names both; the other stays reachable with -x.
#[test]
fn a_repeated_command_name_runs_the_first_entry_and_warns() {
    let dir = std::env::temp_dir().join(format!("repeated-command-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(dir.join("src")).unwrap();
    let entry = |n: &str| format!("  - {{ name: {n}, kind: process.lua, meta: {{ command: {{ name: go }} }}, modules: [io], source: \"return {{ main = function() require('io').print('{n}') end }}\" }}\n");
    std::fs::write(dir.join("src/_index.yaml"), format!("namespace: app\nentries:\n  - {{ name: terminal, kind: terminal.host }}\n{}{}", entry("a"), entry("b"))).unwrap();
    let d = dir.to_str().unwrap();
    let o = run(&["run", "-d", d, "go"]);
    assert_ok(&o);
    assert_eq!(stdout(&o), "a\n");
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(err.contains("command name \"go\" is already used by app:a") && err.contains("-x app:b"), "{err}");
    assert_eq!(stdout(&run(&["run", "-d", d, "-x", "app:b"])), "b\n");
}

/// `meta.command.security` (Wippy's command security): the CLI launch of a command runs as
/// the actor and scope it names; an empty block or an unknown field is a load error.
#[test]
fn a_command_runs_under_the_actor_and_policies_its_meta_names() {
    let dir = std::env::temp_dir().join(format!("command-security-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(dir.join("src")).unwrap();
    let yaml = |security: &str| {
        format!(
            "namespace: app\nentries:\n  - {{ name: terminal, kind: terminal.host }}\n  - {{ name: ops, kind: security.policy, policy: {{ actions: deploy, resources: \"*\", effect: allow }} }}\n  - name: migrate\n    kind: process.lua\n    meta:\n      command:\n        name: migrate\n{security}    source: file://m.lua\n    method: main\n    modules: [io, security]\n"
        )
    };
    std::fs::write(
        dir.join("src/m.lua"),
        "local io, security = require('io'), require('security')\nreturn { main = function()\n  local a = security.actor()\n  io.print(a and a:id(), a and a:meta().role, security.can('deploy', 'x'), security.can('other', 'x'))\nend }\n",
    )
    .unwrap();
    std::fs::write(dir.join(".wippy.yaml"), "security:\n  strict_mode: true\n").unwrap();
    let secured = "        security:\n          actor: { id: system.migrations, meta: { role: operator } }\n          policies: [app:ops]\n";
    std::fs::write(dir.join("src/_index.yaml"), yaml(secured)).unwrap();
    let d = dir.to_str().unwrap();
    for args in [&["run", "-d", d, "migrate"][..], &["run", "-d", d, "-x", "app:migrate"][..]] {
        let o = run(args);
        assert_ok(&o);
        assert_eq!(stdout(&o), "system.migrations\toperator\ttrue\tfalse\n", "{args:?}");
    }
    // without the block: no actor, and strict mode refuses what no policy allows
    std::fs::write(dir.join("src/_index.yaml"), yaml("")).unwrap();
    assert_eq!(stdout(&run(&["run", "-d", d, "migrate"])), "nil\tnil\tfalse\tfalse\n");
    for (bad, says) in [("        security: {}\n", "empty"), ("        security: { actor: { id: a }, polices: [app:ops] }\n", "unknown field")] {
        std::fs::write(dir.join("src/_index.yaml"), yaml(bad)).unwrap();
        let o = run(&["run", "-d", d, "migrate"]);
        let err = String::from_utf8_lossy(&o.stderr);
        assert!(o.status.code() == Some(1) && err.contains("meta.command.security") && err.contains(says), "{bad}: {err}");
    }
}

/// An entry's own `security:` block (Wippy's process and function entries): its actor
/// replaces the inherited one, its policies and groups join the inherited scope, and what it
/// leaves out is inherited; for a process, a function call, and the CLI launch alike.
#[test]
fn an_entry_security_block_sets_the_actor_and_adds_policies_to_what_is_inherited() {
    let dir = std::env::temp_dir().join(format!("entry-security-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(dir.join("src")).unwrap();
    let yaml = r#"namespace: app
entries:
  - { name: terminal, kind: terminal.host }
  - { name: processes, kind: process.host, lifecycle: { auto_start: true } }
  - { name: ops, kind: security.policy, policy: { actions: deploy, resources: "*", effect: allow }, groups: [ops] }
  - { name: read, kind: security.policy, policy: { actions: read, resources: "*", effect: allow } }
  - { name: runtime, kind: security.policy, policy: { actions: ["funcs.*", "process.*"], resources: "*", effect: allow } }
  - name: main
    kind: process.lua
    meta: { command: { name: t } }
    source: file://main.lua
    modules: [io, security, funcs]
    security: { actor: { id: "user:main" }, policies: [app:read, app:runtime] }
  - { name: fn, kind: function.lua, source: file://who.lua, method: who, modules: [security], security: { groups: [app:ops] } }
  - name: worker
    kind: process.lua
    source: file://who.lua
    method: who
    modules: [security]
    security: { actor: { id: "service:worker", meta: { role: worker } } }
"#;
    std::fs::write(dir.join("src/_index.yaml"), yaml).unwrap();
    std::fs::write(
        dir.join("src/who.lua"),
        "local security = require('security')\nreturn { who = function()\n  local a = security.actor()\n  return table.concat({ a and a:id() or '-', a and a:meta().role or '-', tostring(security.can('deploy', 'x')), tostring(security.can('read', 'x')), tostring(security.can('other', 'x')) }, ' ')\nend }\n",
    )
    .unwrap();
    std::fs::write(
        dir.join("src/main.lua"),
        "local io, funcs = require('io'), require('funcs')\nlocal who = require('security')\nreturn { main = function()\n  local a = who.actor()\n  io.print('main', a:id(), who.can('deploy', 'x'), who.can('read', 'x'))\n  io.print('fn', (funcs.call('app:fn')))\n  io.print('worker', (process.exec('app:worker', 'app:processes')))\nend }\n",
    )
    .unwrap();
    std::fs::write(dir.join(".wippy.yaml"), "security:\n  strict_mode: true\n").unwrap();
    let o = run(&["run", "-d", dir.to_str().unwrap(), "t"]);
    assert_ok(&o);
    assert_eq!(
        stdout(&o),
        "main\tuser:main\tfalse\ttrue\nfn\tuser:main - true true false\nworker\tservice:worker worker false true false\n",
        "{}",
        String::from_utf8_lossy(&o.stderr)
    );
    // fail-closed: a policy that does not exist, or an unknown field, stops the load
    for (bad, says) in [("policies: [app:read, app:runtime]", "policies: [app:nope]"), ("policies: [app:read, app:runtime]", "polices: [app:read]")] {
        std::fs::write(dir.join("src/_index.yaml"), yaml.replace(bad, says)).unwrap();
        let o = run(&["run", "-d", dir.to_str().unwrap(), "t"]);
        let err = String::from_utf8_lossy(&o.stderr);
        assert!(o.status.code() == Some(1) && err.contains("app:main") && err.contains("security."), "{says}: {err}");
    }
}

/// The configuration's `override:` section sets entry fields as `-o` does, with values of
/// any YAML type; `-o` is applied after it, so the command line wins.
#[test]
fn the_override_section_of_the_configuration_sets_entry_fields() {
    let dir = hot_upgrade_copy("config-override");
    std::fs::write(
        dir.join(".wippy.yaml"),
        "override:\n  app:counter:meta.tags: [a, b]\n  \"app:counter:kind\": process.lua\n  app:counter:data.comment: from config\n  app:counter:method: loop\n",
    )
    .unwrap();
    let d = dir.to_str().unwrap();
    let o = run(&["registry", "show", "-d", d, "app:counter", "-o", "app:counter:method=main"]);
    assert_ok(&o);
    let out = stdout(&o);
    assert!(out.contains("- a") && out.contains("- b") && out.contains("comment: from config") && out.contains("method: main"), "{out}");
    assert!(!String::from_utf8_lossy(&o.stderr).contains("unknown configuration key"), "{}", String::from_utf8_lossy(&o.stderr));
    std::fs::write(dir.join(".wippy.yaml"), "override:\n  app:nope:x: 1\n").unwrap();
    let o = run(&["registry", "show", "-d", d, "app:counter"]);
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(o.status.code() == Some(1) && err.contains(".wippy.yaml:1") && err.contains("override app:nope:x: no entry app:nope"), "{err}");
}

/// `-o ns:entry:field=value` (Wippy's `--override`) sets a field of a loaded entry before it
/// is checked; a bad override names itself.
#[test]
fn override_sets_an_entry_field_before_the_load_checks() {
    let o = run(&["registry", "show", "-d", "examples/hello", "app:hello", "-o", "app:hello:meta.command.short=Hi", "-o", "app:hello:host.workers=3"]);
    assert_ok(&o);
    let out = stdout(&o);
    assert!(out.contains("short: Hi") && out.contains("workers: 3"), "{out}");
    // checked like a written field: a kind that does not exist is the usual load error
    let o = run(&["run", "-d", "examples/hello", "-o", "app:hello:kind=process.lau", "-x", "app:hello"]);
    assert_eq!(o.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&o.stderr).contains("process.lau"), "{}", String::from_utf8_lossy(&o.stderr));
    // `data.NAME` is the bare NAME (Wippy's path for a field of the entry's data)
    let o = run(&["registry", "show", "-d", "examples/hello", "app:hello", "-o", "app:hello:data.host.workers=4"]);
    assert!(stdout(&o).contains("workers: 4"), "{}", stdout(&o));
    for (bad, says) in [("app:nope:x=1", "no entry app:nope"), ("app:hello:x", "no '='"), ("app:hello:source=x", "source cannot be overridden"), ("app:hello:kind=", "kind must be a non-empty string")] {
        let o = run(&["run", "-d", "examples/hello", "-o", bad, "-x", "app:hello"]);
        assert_eq!(o.status.code(), Some(1), "{bad}");
        let err = String::from_utf8_lossy(&o.stderr);
        assert!(err.contains(&format!("error: -o {bad}: ")) && err.contains(says), "{bad}: {err}");
    }
}
