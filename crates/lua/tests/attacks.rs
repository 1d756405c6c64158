//! The attack suite: every hole an attack run against the node found, with its variants.
//! Each test asserts that the attack fails and that the node goes on serving other
//! processes afterwards (`still_serving`).
mod common;

use std::sync::Arc;
use std::time::Duration;

use common::*;
use wippy_lua::{LuaEntry, ShardOptions};
use wippy_runtime::{ErrorKind, HostConfig, HostSecurity, Spawn, Value};

/// After an attack: a fresh process on the same host still runs, and sees the standard
/// library as it should be.
fn still_serving(h: &Harness) {
    let v = h.ok(r#"
        assert(("abc"):upper() == "ABC" and string.upper("x") == "X", "the string library was changed")
        assert(os.execute == nil and os.getenv == nil and os.exit == nil and os.remove == nil)
        return process.exec("test:echo-once", "app:processes", "ping")
    "#);
    assert_eq!(v, s("ping"));
}

fn harness(workers: usize) -> Harness {
    let h = Harness::new(workers);
    h.entry("test:echo-once", "return { main = function(x) return x end }");
    h
}

fn marker(name: &str) -> std::path::PathBuf {
    let p = std::env::temp_dir().join(format!("wippy-attack-{}-{name}", std::process::id()));
    let _ = std::fs::remove_file(&p);
    p
}

// ---------------------------------------------------------------------------------------
// The loader: a source cannot close the function it is compiled into
// ---------------------------------------------------------------------------------------

/// The repro of the attack run: close the wrapper, run a command, hijack string.upper.
fn loader_escape(path: &std::path::Path) -> String {
    format!(
        "return {{ main = function() return \"x\" end }} end,\n  os.execute(\"id > {}\"),\n  \
         (function() string.upper = function(s) return \"HIJACKED:\" .. s end; return 1 end)(),\n  function()",
        path.display()
    )
}

#[test]
fn a_source_cannot_escape_its_chunk_at_spawn() {
    let h = harness(1);
    let path = marker("spawn");
    let entry = LuaEntry::process("test:escape", &loader_escape(&path)).modules(ALL_MODULES);
    let err = h.lua.check(&entry).unwrap_err();
    assert_eq!(err.kind, ErrorKind::Invalid, "{}", err.message);
    assert!(err.message.contains("entry 'test:escape'"), "{}", err.message);
    h.lua.add_entry(entry);
    let err = h.node.spawn(HOST, Spawn::entry("test:escape")).map(|_| ()).err();
    if err.is_none() {
        // spawned: the compile error must end it
        let (_, w) = h.node.spawn_watched(HOST, Spawn::entry("test:escape")).unwrap();
        assert!(w.wait_timeout(Duration::from_secs(10)).unwrap().is_err());
    }
    assert!(!path.exists(), "the command ran");
    still_serving(&h);
}

#[test]
fn loader_escape_variants_fail_to_compile() {
    let h = harness(1);
    let variants = [
        // close the wrapper with a trailing comment hiding the loader's `end`
        "return {} end, (function() string.upper = nil end)() --",
        // a long comment left open to swallow the loader's tail
        "return {} end, string.len --[[",
        // a long string left open
        "return {} end, [==[",
        // a second chunk after a full return
        "return { main = function() end }\nend\nreturn function()",
        // shebang line followed by the escape
        "#!/bin/lua\nreturn {} end, os, function()",
        // typed syntax around the escape (goes through the eraser first)
        "local x: number = 1\nreturn {} end, (function(): number string.upper = nil return 1 end)(), function()",
    ];
    for (i, src) in variants.iter().enumerate() {
        let id = format!("test:variant{i}");
        let entry = LuaEntry::process(&id, src).modules(ALL_MODULES);
        assert!(h.lua.check(&entry).is_err(), "variant {i} compiled: {src}");
        h.lua.add_entry(entry);
        let (_, w) = h.node.spawn_watched(HOST, Spawn::entry(&id)).unwrap();
        assert!(w.wait_timeout(Duration::from_secs(10)).unwrap().is_err(), "variant {i} ran");
    }
    still_serving(&h);
}

#[test]
fn nothing_of_the_vm_is_reachable_from_a_process() {
    let h = harness(1);
    let v = h.ok(r#"
        -- load without an environment gets the process's own, never the VM's
        local g = load("return _G")()
        assert(g == _G, "load's default environment is the process's")
        assert(load("return os.execute")() == nil)
        -- no function gives the VM's globals: not load with an explicit nil env, not _ENV tricks
        local f = load("local e = ... return e", "x", "t", nil)
        assert(f ~= nil)
        assert(rawget(_G, "string") == nil or rawget(_G, "string") ~= getmetatable)
        -- a library's proxy keeps writes to itself
        string.upper = function() return "mine" end
        assert(("a"):upper() == "A", "the string metatable's index is the shared table, untouched")
        assert(getmetatable("") == false)
        -- os in the process is the safe four only
        for _, k in ipairs({"execute", "exit", "remove", "rename", "tmpname", "getenv", "setlocale"}) do
            assert(os[k] == nil, "os." .. k)
        end
        return type(os.time) .. type(os.clock) .. type(os.date) .. type(os.difftime)
    "#);
    assert_eq!(v, s("functionfunctionfunctionfunction"));
    still_serving(&h);
}

#[test]
fn a_library_source_cannot_escape_either() {
    let h = harness(1);
    let path = marker("library");
    h.lua.add_entry(LuaEntry::library("test:evil-lib", &loader_escape(&path)));
    h.lua.add_entry(
        LuaEntry::process("test:importer", "return { main = function() return pcall(require, 'evil') end }")
            .import("evil", "test:evil-lib"),
    );
    let r = h.node.exec(HOST, Spawn::entry("test:importer"));
    assert!(matches!(r, Ok(Value::Bool(false)) | Err(_)), "{r:?}");
    assert!(!path.exists(), "the command ran");
    still_serving(&h);
}


// ---------------------------------------------------------------------------------------
// Host boundaries on every operation that reaches another process (SPEC §7.3)
// ---------------------------------------------------------------------------------------

/// A host "app:sandbox" whose processes may message only their own host.
fn with_sandbox(h: &Harness, modules: Option<&[&str]>) {
    let mut cfg = HostConfig::new("app:sandbox").workers(1).stop_timeout(Duration::from_millis(200));
    cfg.security = Arc::new(HostSecurity {
        modules: modules.map(|m| m.iter().map(|s| s.to_string()).collect()),
        send_to: Some(vec!["app:sandbox".into()]),
        ..HostSecurity::default()
    });
    h.lua.set_host_options("app:sandbox", ShardOptions::default());
    h.node.add_host(cfg).unwrap();
}

/// A process on the main host that counts every event and message it gets, and answers
/// "count" with that number (the count request itself not counted).
const WITNESS: &str = r#"return { main = function()
    process.registry.register("witness")
    process.set_options({ trap_links = true })
    local seen = {}
    local inbox, events = process.inbox(), process.events()
    while true do
        local r = channel.select{ inbox:case_receive(), events:case_receive() }
        if r.channel == inbox and r.value:topic() == "count" then
            process.send(r.value:from(), "count", table.concat(seen, ","))
        else
            seen[#seen + 1] = r.channel == inbox and r.value:topic() or r.value.kind
        end
    end
end }"#;

#[test]
fn no_operation_crosses_a_forbidden_host_boundary() {
    let h = harness(2);
    with_sandbox(&h, None);
    h.entry("test:witness", WITNESS);
    let witness = h.node.spawn(HOST, Spawn::entry("test:witness")).unwrap();
    while h.node.lookup("witness").is_none() {
        std::thread::yield_now();
    }
    h.entry("test:prober", &format!(r#"return {{ main = function()
        local w = "{witness}"
        local out = {{}}
        local function try(what, ok, err)
            if ok then out[#out + 1] = what .. ":allowed" return end
            out[#out + 1] = what .. ":" .. err:kind() .. ":" .. err:message()
        end
        try("send", process.send(w, "hello"))
        try("send-name", process.send("witness", "hello"))
        try("cancel", process.cancel(w, "bye"))
        try("cancel-name", process.cancel("witness", "bye"))
        try("terminate", process.terminate(w))
        try("link", process.link(w))
        try("unlink", process.unlink(w))
        try("monitor", process.monitor(w))
        try("unmonitor", process.unmonitor(w))
        try("register-foreign", process.registry.register("stolen", w))
        try("spawn", process.spawn("test:echo-once", "app:processes", "x"))
        try("spawn-with-message", process.with_context({{}}):with_message("hello", 1):spawn("test:echo-once", "app:processes", "x"))
        try("exec", process.exec("test:echo-once", "app:processes", "x"))
        -- its own host stays open
        try("own-host", process.exec("test:echo-once", "app:sandbox", "x"))
        return table.concat(out, "\n")
    end }}"#));
    let (_, watch) = h.node.spawn_watched("app:sandbox", Spawn::entry("test:prober")).unwrap();
    let out = watch.wait_timeout(Duration::from_secs(20)).unwrap().expect("prober ran");
    let out = out.as_str().unwrap().to_string();
    let lines: Vec<&str> = out.lines().collect();
    assert_eq!(lines.len(), 14, "{out}");
    for line in &lines[..13] {
        assert!(line.contains(":PermissionDenied:"), "not denied: {line}");
        assert!(line.contains("from host app:sandbox to host app:processes"), "both hosts named: {line}");
    }
    assert_eq!(lines[13], "own-host:allowed");
    // The witness is alive, got nothing, and no name was stolen.
    let seen = h.ok(r#"local ch = process.listen("count") process.send("witness", "count") return ch:receive()"#);
    assert_eq!(seen, s(""), "something crossed the boundary");
    assert_eq!(h.node.lookup("stolen"), None);
    h.node.terminate(witness).unwrap();
    still_serving(&h);
}

// ---------------------------------------------------------------------------------------
// imports: a library cannot hand a process modules its host forbids
// ---------------------------------------------------------------------------------------

#[test]
fn imports_cannot_bypass_a_hosts_module_list() {
    let h = harness(1);
    with_sandbox(&h, Some(&["logger", "time", "security"]));
    let lib = "return { reg = registry, json = json, env = env, funcs = funcs }";
    h.lua.add_entry(LuaEntry::library("test:leaky", lib).modules(&["registry", "json", "env", "funcs"]));
    // a library that binds nothing itself but imports the leaky one
    h.lua.add_entry(LuaEntry::library("test:relay", "return require('leaky')").import("leaky", "test:leaky"));
    h.lua.add_entry(LuaEntry::library("test:clean", "return { twice = function(x) return 2 * x end }").modules(&["time"]));
    let user = |id: &str, alias: &str, lib: &str| {
        LuaEntry::process(id, &format!("return {{ main = function() local l = require('{alias}') return type(l) end }}"))
            .modules(&["logger"])
            .import(alias, lib)
    };
    h.lua.add_entry(user("test:direct", "leaky", "test:leaky"));
    h.lua.add_entry(user("test:indirect", "relay", "test:relay"));
    h.lua.add_entry(user("test:fine", "clean", "test:clean"));
    for (id, lib) in [("test:direct", "test:leaky"), ("test:indirect", "test:leaky")] {
        let e = h.node.spawn("app:sandbox", Spawn::entry(id)).unwrap_err();
        assert_eq!(e.kind, ErrorKind::PermissionDenied, "{id}: {}", e.message);
        assert!(e.message.contains(&format!("library {lib} imported by entry {id} on host app:sandbox")), "{}", e.message);
    }
    assert_eq!(h.node.exec("app:sandbox", Spawn::entry("test:fine")).unwrap(), s("table"));
    // the same imports are fine where the host allows every module
    assert_eq!(h.node.exec(HOST, Spawn::entry("test:indirect")).unwrap(), s("table"));

    // A library that gains a forbidden module after a process spawned: require refuses it.
    h.lua.add_entry(
        LuaEntry::process(
            "test:late",
            "return { main = function() process.inbox():receive() local ok, e = pcall(require, 'clean') return tostring(ok) .. ' ' .. tostring(e) end }",
        )
        .modules(&["logger"])
        .import("clean", "test:clean"),
    );
    let (pid, watch) = h.node.spawn_watched("app:sandbox", Spawn::entry("test:late")).unwrap();
    let mut changed = LuaEntry::library("test:clean", "return { json = json }").modules(&["json"]);
    changed.version = 2;
    h.lua.update_entries(vec![changed], &[]);
    h.node.send(pid, "go", wippy_runtime::Payload::new()).unwrap();
    let v = watch.wait_timeout(Duration::from_secs(10)).unwrap().unwrap();
    let v = v.as_str().unwrap();
    assert!(v.starts_with("false ") && v.contains("permission denied: module on json"), "{v}");
    still_serving(&h);
}

#[test]
fn registry_writes_cannot_widen_a_hosts_module_list() {
    let h = harness(1);
    with_sandbox(&h, Some(&["registry", "logger"]));
    h.lua.add_entry(
        LuaEntry::process("test:writer", r#"return { main = function()
            local out = {}
            local function try(what, entry)
                local cs = registry.changes()
                local ok, err = cs:create(entry)
                out[#out + 1] = what .. ":" .. (ok and "allowed" or (err:kind() .. ":" .. err:message()))
            end
            try("json", { id = "evil:p", kind = "process.lua", data = { source = "return {}", modules = { "json" } } })
            try("lib", { id = "evil:l", kind = "library.lua", data = { source = "return {}", modules = { "logger", "env" } } })
            try("host", { id = "evil:h", kind = "process.host", data = {} })
            try("service", { id = "evil:s", kind = "process.service", data = { process = "evil:p", host = "app:processes" } })
            try("fine", { id = "ok:p", kind = "process.lua", data = { source = "return {}", modules = { "logger" } } })
            return table.concat(out, "\n")
        end }"#)
        .modules(&["registry", "logger"]),
    );
    let out = h.node.exec("app:sandbox", Spawn::entry("test:writer")).unwrap();
    let out = out.as_str().unwrap().to_string();
    let lines: Vec<&str> = out.lines().collect();
    assert_eq!(lines.len(), 5, "{out}");
    for l in &lines[..4] {
        assert!(l.contains(":PermissionDenied:permission denied: registry.write on evil:"), "{l}");
    }
    assert!(lines[0].contains("module json, which host app:sandbox does not allow"), "{}", lines[0]);
    assert!(lines[1].contains("module env"), "{}", lines[1]);
    assert_eq!(lines[4], "fine:allowed");
    still_serving(&h);
}

#[test]
fn a_huge_name_is_not_echoed_whole() {
    let h = harness(1);
    let v = h.ok(r#"
        local name = string.rep("n", 1024 * 1024)
        local _, e1 = process.send(name, "x")
        local _, e2 = process.registry.lookup(name)
        local _, e3 = process.spawn(name, "app:processes")
        local _, e4 = process.spawn("test:echo-once", name)
        local n = 0
        for _, e in ipairs({ e1, e2, e3, e4 }) do
            assert(e ~= nil)
            assert(#e:message() < 400, e:kind() .. " " .. #e:message())
            n = n + 1
        end
        return n
    "#);
    assert_eq!(v, Value::Int(4));
    still_serving(&h);
}

// ---------------------------------------------------------------------------------------
// Data: an error is never lost on its way out of a process or function
// ---------------------------------------------------------------------------------------

#[test]
fn a_non_nil_second_return_is_an_error_whatever_its_type() {
    let h = harness(1);
    let e = h.err("return nil, { msg = 'x', code = 7 }");
    assert_eq!(e.message, "x");
    let d = e.details.expect("the fields are kept");
    assert_eq!(d.as_table().unwrap().get(&s("code")), Some(&Value::Int(7)));
    let e = h.err("return 1, 42");
    assert_eq!(e.message, "42");
    let e = h.err("return nil, { kind = 'NotFound', message = 'gone', retryable = true }");
    assert_eq!((e.kind, e.message.as_str(), e.retryable), (ErrorKind::NotFound, "gone", Some(true)));
    let e = h.err("error({ code = 1 })");
    assert!(!e.message.starts_with("table: 0x"), "{}", e.message);
    assert_eq!(e.details.unwrap().as_table().unwrap().get(&s("code")), Some(&Value::Int(1)));
    // callers see the error, with its fields, through exec and funcs.call
    h.lua.add_entry(LuaEntry::function("test:fails", "return { call = function() return nil, { msg = 'from a function', code = 3 } end }"));
    h.entry("test:fails-proc", "return { main = function() error({ code = 5, message = 'raised' }) end }");
    let v = h.ok(r#"
        local v, e = funcs.call("test:fails")
        assert(v == nil and e ~= nil, "funcs.call lost the error")
        local v2, e2 = process.exec("test:fails-proc", "app:processes")
        assert(v2 == nil and e2 ~= nil, "exec lost the error")
        return e:message() .. "|" .. e:details().code .. "|" .. e2:message() .. "|" .. e2:details().code
    "#);
    assert_eq!(v, s("from a function|3|raised|5"));
    still_serving(&h);
}

// ---------------------------------------------------------------------------------------
// No single process takes the node down: mailbox floods
// ---------------------------------------------------------------------------------------

/// A sleeper that never reads; a flooder that sends `n` messages of `size` bytes to it and
/// counts how many sends were refused. The spawner watches the sleeper.
const FLOOD: &str = r#"
    local sleeper = process.spawn_monitored("test:sleeper", "app:processes")
    local events = process.events()
    local n, size = ...
    local blob = string.rep("x", size)
    local refused = 0
    for i = 1, n do
        local ok = process.send(sleeper, "junk", blob)
        if not ok then refused = refused + 1 end
    end
    local ev = events:receive()
    assert(ev.kind == process.event.EXIT, ev.kind)
    local e = ev.result.error
    return e:kind() .. "|" .. e:message() .. "|" .. tostring(refused > 0)
"#;

fn sleeper(h: &Harness) {
    // waits on a topic nobody sends: every "junk" message stays queued
    h.entry("test:sleeper", "return { main = function() process.listen('never'):receive() end }");
}

#[test]
fn a_mailbox_flood_ends_the_receiver_not_the_node() {
    let h = Harness::with(2, ShardOptions::default(), |c| c.max_mailbox_bytes(1 << 20));
    h.entry("test:echo-once", "return { main = function(x) return x end }");
    sleeper(&h);
    let v = h.run_args(FLOOD, vec![Value::Int(100_000), Value::Int(100)]).expect("the flooder goes on");
    let v = v.as_str().unwrap().to_string();
    assert!(v.starts_with("LimitExceeded|mailbox limit exceeded: more than 1048576 bytes queued (host app:processes max_mailbox_bytes)|true"), "{v}");
    still_serving(&h);
}

#[test]
fn a_mailbox_message_limit_ends_the_receiver() {
    let h = Harness::with(2, ShardOptions::default(), |c| c.max_mailbox(100));
    h.entry("test:echo-once", "return { main = function(x) return x end }");
    sleeper(&h);
    let v = h.run_args(FLOOD, vec![Value::Int(5_000), Value::Int(1)]).expect("the flooder goes on");
    assert!(v.as_str().unwrap().starts_with("LimitExceeded|mailbox limit exceeded: more than 100 messages queued"), "{v:?}");
    still_serving(&h);
}

#[test]
fn a_linked_process_sees_the_flooded_one_fail_and_sends_from_outside_count_too() {
    let h = Harness::with(2, ShardOptions::default(), |c| c.max_mailbox(50));
    h.entry("test:echo-once", "return { main = function(x) return x end }");
    sleeper(&h);
    let (pid, watch) = h.node.spawn_watched(HOST, Spawn::entry("test:sleeper")).unwrap();
    let mut refused = 0;
    for i in 0..1000 {
        if h.node.send(pid, "junk", wippy_runtime::payload![Value::Int(i)]).is_err() {
            refused += 1;
        }
    }
    let e = watch.wait_timeout(Duration::from_secs(10)).unwrap().unwrap_err();
    assert_eq!(e.kind, ErrorKind::LimitExceeded, "{}", e.message);
    assert!(refused > 0 || h.node.send(pid, "junk", wippy_runtime::Payload::new()).is_err());
    // linked: the link sees the failure (LINK_DOWN with the error)
    let v = h.ok(r#"
        process.set_options({ trap_links = true })
        local pid = process.spawn_linked("test:sleeper", "app:processes")
        for i = 1, 200 do process.send(pid, "junk", i) end
        local ev = process.events():receive()
        return ev.kind .. "|" .. ev.result.error:kind()
    "#);
    assert_eq!(v, s("pid.link.down|LimitExceeded"));
    still_serving(&h);
}

#[test]
fn queued_messages_count_toward_a_process_memory_limit() {
    // the host bounds a process's memory at 1 MiB (shared isolation); its mailbox may hold
    // more (the runtime's default bound), but once it runs, what is queued counts
    let opts = ShardOptions { max_process_memory: 1 << 20, ..ShardOptions::default() };
    let h = Harness::with(2, opts, |c| c);
    h.entry("test:echo-once", "return { main = function(x) return x end }");
    // computes forever (allocating a little) and never reads: only its limit can end it
    h.entry("test:busy", "return { main = function() local t = {} local i = 0 while true do i = i + 1 t[i % 64] = tostring(i) end end }");
    let v = h.ok(r#"
        local pid = process.spawn_monitored("test:busy", "app:processes")
        local blob = string.rep("x", 64 * 1024)
        for i = 1, 40 do process.send(pid, "junk", blob) end -- 2.5 MiB queued
        local ev = process.events():receive()
        return ev.result.error and ev.result.error:kind() or "no error"
    "#);
    assert_eq!(v, s("LimitExceeded"));
    still_serving(&h);
}

// ---------------------------------------------------------------------------------------
// Other amplifiers: names, timers
// ---------------------------------------------------------------------------------------

#[test]
fn names_are_bounded_in_length_and_number() {
    let h = harness(1);
    let v = h.ok(&format!(r#"
        local ok, e = process.registry.register(string.rep("n", {max} + 1))
        assert(not ok and e:kind() == "Invalid" and #e:message() < 400, tostring(e))
        for i = 1, {count} do assert(process.registry.register("name" .. i)) end
        local ok2, e2 = process.registry.register("one-too-many")
        assert(process.registry.register("name1"), "re-registering a held name stays fine")
        return e2:kind()
    "#, max = wippy_runtime::MAX_NAME_BYTES, count = wippy_runtime::MAX_NAMES_PER_PROCESS));
    assert_eq!(v, s("LimitExceeded"));
    still_serving(&h);
}

#[test]
fn pending_timers_per_process_are_bounded() {
    let h = harness(1);
    let v = h.ok(&format!(r#"
        local timers = {{}}
        for i = 1, {max} do timers[i] = time.timer("1h") end
        local ok, e = pcall(time.after, "1ms")
        assert(not ok)
        local ok2, e2 = pcall(time.sleep, "1ms")
        assert(not ok2)
        for i = 1, 10 do timers[#timers]:stop(); timers[#timers] = nil end
        time.sleep("1ms") -- room again
        return tostring(e) .. "|" .. tostring(e2)
    "#, max = wippy_runtime::MAX_PENDING_COMMANDS));
    let v = v.as_str().unwrap().to_string();
    assert!(v.contains(&format!("already waits for {} timers and commands", wippy_runtime::MAX_PENDING_COMMANDS)), "{v}");
    still_serving(&h);
}

#[test]
fn env_reads_only_what_the_project_declared() {
    let h = harness(1);
    h.lua.set_env("APP_MODE", "test");
    std::env::set_var("WIPPY_ATTACK_SECRET", "s3cret");
    let v = h.ok(r#"
        assert(env.get("APP_MODE") == "test")
        local v, e = env.get("WIPPY_ATTACK_SECRET")
        assert(v == nil and e:kind() == "NotFound", tostring(v))
        local p, e2 = env.get("PATH")
        assert(p == nil and e2:kind() == "NotFound")
        return true
    "#);
    assert_eq!(v, Value::Bool(true));
    still_serving(&h);
}

#[test]
fn no_runtime_object_gives_process_code_the_runtimes_state() {
    let h = harness(1);
    h.lua.add_entry(LuaEntry::function("test:fn", "return { call = function() return 1 end }"));
    let v = h.ok(r#"
        local chans = {
            new = channel.new(2), inbox = process.inbox(), events = process.events(),
            listen = process.listen("t"), listen_msg = process.listen("m", { message = true }),
            after = time.after("1h"),
        }
        local tm, tk = time.timer("1h"), time.ticker("1h")
        local fut = funcs.async("test:fn")
        chans.timer, chans.ticker, chans.future = tm:channel(), tk:channel(), fut:channel()
        for name, ch in pairs(chans) do
            assert(type(ch) == "userdata", name .. " is a " .. type(ch))
            assert(getmetatable(ch) == "channel", name)
            for i = 1, 10 do assert(ch[i] == nil, name .. "[" .. i .. "]") end
            assert(not pcall(rawget, ch, 3), name .. ": rawget")
            assert(not pcall(rawset, ch, 3, 1), name .. ": rawset")
            assert(not pcall(next, ch), name .. ": next")
            assert(not pcall(setmetatable, ch, {}), name .. ": setmetatable")
        end
        -- timers, tickers and futures: no field holds a table (a table would be runtime state)
        for name, obj in pairs({ timer = tm, ticker = tk, future = fut }) do
            for k, v in pairs(obj) do
                assert(type(v) ~= "table" and type(v) ~= "thread" and type(v) ~= "function", name .. "." .. tostring(k))
            end
        end
        -- and they still work: identity, select, receive, close
        assert(process.inbox() == chans.inbox and process.listen("t") == chans.listen)
        local c = chans.new
        c:send(7)
        local r = channel.select{ c:case_receive(), chans.after:case_receive() }
        assert(r.channel == c and r.value == 7 and r.ok)
        c:close()
        assert(c:is_closed() and select(2, c:receive()) == false)
        assert(fut:response():receive():data() == 1)
        tm:stop(); tk:stop()
        local ok, err = process.send(process.pid(), "x", { ch = c })
        assert(ok == nil and tostring(err):find("field 'ch': a channel", 1, true), tostring(err))
        return true
    "#);
    assert_eq!(v, Value::Bool(true));
    still_serving(&h);
}

#[test]
fn a_spawn_loop_stops_at_the_process_limit() {
    assert_eq!(HostConfig::new("x").max_processes, wippy_runtime::DEFAULT_MAX_PROCESSES, "bounded by default");
    let h = Harness::with(2, ShardOptions::default(), |c| c.max_processes(500));
    h.entry("test:echo-once", "return { main = function(x) return x end }");
    sleeper(&h);
    // the sleepers are linked to the spawner, whose failure then takes them down
    let e = h.err(r#"
        local n, err = 0, nil
        while true do
            local pid, e = process.spawn_linked("test:sleeper", "app:processes")
            if not pid then err = e break end
            n = n + 1
        end
        error(n .. " " .. err:kind())
    "#);
    // the spawner itself is one of the 500
    assert!(e.message.contains("499 LimitExceeded"), "{}", e.message);
    // once the linked sleepers are gone the host takes new processes again
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    loop {
        match h.node.exec(HOST, Spawn::entry("test:echo-once").args(vec![s("back")])) {
            Ok(v) => break assert_eq!(v, s("back")),
            Err(e) if e.kind == ErrorKind::LimitExceeded && std::time::Instant::now() < deadline => std::thread::yield_now(),
            Err(e) => panic!("the host did not recover: {}", e.message),
        }
    }
}
