//! process.upgrade: a new Lua state from an entry (the current version of its own, or
//! another), keeping the PID, names, monitors, links and every message not yet taken, in
//! order; a failed upgrade is an abnormal exit; upgrading many processes compiles once.
mod common;

use std::time::Duration;

use common::*;
use wippy_lua::LuaEntry;
use wippy_runtime::{Spawn, Value};

const V1: &str = r#"
return { main = function(n)
    process.registry.register("upgradee")
    process.set_options({ trap_links = true })
    local inbox = process.inbox()
    local got = {}
    for i = 1, n do got[i] = inbox:receive():payload():data() end
    -- every message so far came in order
    for i = 1, n do assert(got[i] == i, "v1 out of order at " .. i) end
    process.upgrade(nil, n, process.pid())
    error("upgrade returned")
end }
"#;

const V2: &str = r#"
return { main = function(seen, pid_before)
    local inbox = process.inbox()
    local next_ = seen + 1
    while next_ <= 100 do
        local v = inbox:receive():payload():data()
        if v ~= next_ then return nil, "v2 expected " .. next_ .. ", got " .. tostring(v) end
        next_ = next_ + 1
    end
    local same = pid_before == process.pid() and process.registry.lookup("upgradee") == process.pid()
    return "v2 took " .. (next_ - 1 - seen) .. " more; same pid and name: " .. tostring(same)
        .. "; trap_links: " .. tostring(process.get_options().trap_links)
end }
"#;

#[test]
fn upgrade_keeps_pid_name_and_every_queued_message_in_order() {
    let h = Harness::new(2);
    let mut e2 = LuaEntry::process("test:up2", V1).modules(ALL_MODULES);
    e2.version = 1;
    h.lua.add_entry(e2);
    let mut v2 = LuaEntry::process("test:up2", V2).modules(ALL_MODULES);
    v2.version = 2;
    // v1 starts and waits for 50 messages; meanwhile the entry gets version 2; all 100
    // messages are sent at once, so 50 are still queued when v1 upgrades to the current
    // version of its entry (v2), which must find them, in order.
    let (pid, watch) = h.node.spawn_watched(HOST, Spawn::entry("test:up2").arg(Value::Int(50))).unwrap();
    h.lua.add_entry(v2);
    for i in 1..=100 {
        h.node.send(pid, "n", wippy_runtime::payload![i as i64]).unwrap();
    }
    let r = watch.wait_timeout(Duration::from_secs(20)).expect("finished").expect("ran");
    assert_eq!(r.as_str().unwrap(), "v2 took 50 more; same pid and name: true; trap_links: false");
}

#[test]
fn a_failed_upgrade_ends_the_process_and_monitors_see_it() {
    let h = Harness::new(1);
    h.lua.add_entry(LuaEntry::process("test:bad", "return { main = function() process.upgrade('test:missing') end }").modules(ALL_MODULES));
    h.lua.add_entry(LuaEntry::process("test:broken", "return { main = function() process.upgrade('test:syntax') end }").modules(ALL_MODULES));
    h.lua.add_entry(LuaEntry::process("test:syntax", "return { main = function( end }").modules(ALL_MODULES));
    h.lua.add_entry(LuaEntry::process("test:loud", "return { main = function() process.upgrade('test:raises') end }").modules(ALL_MODULES));
    h.lua.add_entry(LuaEntry::process("test:raises", "error('no good', 0)").modules(ALL_MODULES));
    let v = h.ok(
        r#"
        local ev = process.events()
        local out = {}
        for _, id in ipairs({ "test:bad", "test:broken", "test:loud" }) do
            process.spawn_monitored(id, "app:processes")
            local e = ev:receive()
            out[#out + 1] = tostring(e.result.error)
        end
        return table.concat(out, "\n")
    "#,
    );
    let lines: Vec<&str> = v.as_str().unwrap().lines().collect();
    assert_eq!(lines[0], "upgrade: entry not found: test:missing");
    assert!(lines[1].starts_with("upgrade: entry 'test:syntax':"), "{}", lines[1]);
    assert_eq!(lines[2], "upgrade: no good");
}

#[test]
fn upgrading_many_processes_compiles_the_new_version_once() {
    let h = Harness::new(2);
    let parked = "return { main = function() local go = process.listen('go') go:receive() process.upgrade(nil) end }";
    h.lua.add_entry(LuaEntry::process("test:many", parked).modules(ALL_MODULES));
    let n = 1000;
    let mut watches = Vec::new();
    for _ in 0..n {
        watches.push(h.node.spawn_watched(HOST, Spawn::entry("test:many")).unwrap());
    }
    let mut next = LuaEntry::process("test:many", "return { main = function() return process.pid() end }").modules(ALL_MODULES);
    next.version = 2;
    let before = h.lua.compile_count();
    h.lua.add_entry(next);
    for (pid, _) in &watches {
        h.node.send(*pid, "go", wippy_runtime::payload![]).unwrap();
    }
    for (pid, w) in watches {
        let r = w.wait_timeout(Duration::from_secs(20)).expect("finished").expect("ran");
        assert_eq!(r.as_str().unwrap(), pid.to_string());
    }
    assert_eq!(h.lua.compile_count() - before, 1, "one compilation for all the upgrades");
}

#[test]
fn outdated_events_drive_a_self_upgrade_and_coalesce_while_pending() {
    let h = Harness::new(2);
    h.lua.add_entry(LuaEntry::library("test:helper", "return { version = 1 }"));
    let counter_v1 = r#"
        local helper = require("helper")
        return { main = function(count)
            count = count or 0
            process.set_options({ upgradable = true })
            local events, inbox = process.events(), process.inbox()
            process.registry.register("counter")
            while true do
                local r = channel.select { inbox:case_receive(), events:case_receive() }
                if r.channel == events then
                    if r.value.kind == process.event.OUTDATED then
                        table.sort(r.value.sources)
                        process.registry.unregister("counter")
                        return process.upgrade(nil, count, table.concat(r.value.sources, ","))
                    end
                elseif r.value:topic() == "inc" then
                    count = count + 1
                    process.send(r.value:from(), "count", count, helper.version)
                end
            end
        end }
    "#;
    let counter_v2 = r#"
        return { main = function(count, why) return "v2 with count " .. count .. " after " .. why end }
    "#;
    let mut e = LuaEntry::process("test:counter", counter_v1).modules(ALL_MODULES).import("helper", "test:helper");
    h.lua.add_entry(e.clone());
    let (pid, watch) = h.node.spawn_watched(HOST, Spawn::entry("test:counter")).unwrap();
    let v = h.ok(
        r#"
        while not process.registry.lookup("counter") do time.sleep("1ms") end
        local counts = process.listen("count")
        for i = 1, 3 do process.send("counter", "inc") end
        local last
        for i = 1, 3 do last = counts:receive() end
        return last[1] * 10 + last[2]
    "#,
    );
    assert_eq!(v, Value::Int(31), "three increments with helper version 1");
    // Two changes land while the process is busy elsewhere... it takes them as one event.
    e.source = std::sync::Arc::from(counter_v2);
    e.version = 2;
    let mut lib = LuaEntry::library("test:helper", "return { version = 2 }");
    lib.version = 2;
    h.lua.update_entries(vec![e, lib], &[]);
    let r = watch.wait_timeout(Duration::from_secs(20)).expect("finished").expect("ran");
    assert_eq!(r.as_str().unwrap(), "v2 with count 3 after test:counter,test:helper");
    let _ = pid;
}

#[test]
fn outdated_notices_merge_into_one_pending_event() {
    let h = Harness::new(1);
    h.lua.add_entry(LuaEntry::library("test:lib", "return {}"));
    let src = r#"
        return { main = function()
            process.set_options({ upgradable = true })
            process.registry.register("waiter")
            process.listen("go"):receive()
            local events = process.events()
            local first = events:receive()
            table.sort(first.sources)
            local more = channel.select { events:case_receive(), default = true }
            return first.kind .. " " .. table.concat(first.sources, ",") .. " more=" .. tostring(not more.default)
        end }
    "#;
    let e = LuaEntry::process("test:waiter", src).modules(ALL_MODULES).import("lib", "test:lib");
    h.lua.add_entry(e.clone());
    let (pid, watch) = h.node.spawn_watched(HOST, Spawn::entry("test:waiter")).unwrap();
    h.ok(r#"while not process.registry.lookup("waiter") do time.sleep("1ms") end return true"#);
    let mut e2 = e.clone();
    e2.version = 2;
    h.lua.add_entry(e2);
    let mut lib = LuaEntry::library("test:lib", "return { x = 1 }");
    lib.version = 2;
    h.lua.add_entry(lib);
    h.node.send(pid, "go", wippy_runtime::payload![]).unwrap();
    let r = watch.wait_timeout(Duration::from_secs(20)).expect("finished").expect("ran");
    assert_eq!(r.as_str().unwrap(), "pid.outdated test:lib,test:waiter more=false");
}

#[test]
fn a_supervisor_restarts_a_process_whose_upgrade_failed() {
    use std::sync::Arc;
    use wippy_runtime::{RestartPolicy, ServiceKind, ServiceSpec, ServiceState, Supervisor, SystemClock};
    let h = Harness::new(1);
    // Each run counts itself in the registry of names, then tries a broken upgrade.
    h.lua.add_entry(
        LuaEntry::process("test:svc", "return { main = function() process.upgrade('test:gone') end }").modules(ALL_MODULES),
    );
    let spec = ServiceSpec {
        id: "test:svc".into(),
        kind: ServiceKind::Process { host: HOST.into(), entry: "test:svc".into(), args: vec![], context: None, identity: None },
        requires: vec![],
        auto_start: true,
        stop_timeout: Duration::from_secs(1),
        restart: RestartPolicy { initial_delay: Duration::ZERO, max_delay: Duration::ZERO, jitter: 0.0, max_attempts: 3, ..RestartPolicy::default() },
    };
    let sup = Supervisor::new(h.node.handle(), vec![spec], Arc::new(SystemClock::new(&h.node.handle()))).unwrap();
    sup.start_auto();
    assert!(sup.wait_for(Duration::from_secs(20), |t| t.last().is_some_and(|t| t.state == ServiceState::Exited)));
    let failures: Vec<String> = sup.history().iter().filter(|t| t.state == ServiceState::Failed).map(|t| t.error.clone().unwrap_or_default()).collect();
    assert_eq!(failures.len(), 2, "restarted after each failed upgrade until max_attempts");
    assert!(failures.iter().all(|e| e == "upgrade: entry not found: test:gone"), "{failures:?}");
}
