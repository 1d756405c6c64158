//! Isolation inside a shard (SPEC §2.3, §9): two processes in one VM try to reach each
//! other's globals, libraries, metatables and upvalues, and the sandbox's forbidden parts.
mod common;
use common::*;
use wippy_runtime::{Spawn, Value};

const TRICKS: &str = r#"
    secret = "mine"
    string.upper = function() return "hijacked" end
    rawset(string, "lower", nil)
    string.extra = "planted"
    table.insert = nil
    math.pi = 3
    os.time = function() return 0 end
    assert(not pcall(function() process.event.EXIT = "hacked" end), "constants are read-only")
    assert(not pcall(rawset, process.event, "CANCEL", "hacked"))
    assert(not pcall(function() process.registry.lookup = nil end))
    local _, shared = pairs(process.event)
    rawset(shared, "LINK_DOWN", "hacked") -- a copy: harmless
    errors.NOT_FOUND = "hacked"
    coroutine.spawn = nil
    channel.new = nil
    payload.new = nil
    print = nil
    pairs = function() error("hijacked pairs") end
    load("leaked = true")()
    local ok1 = pcall(setmetatable, _G, {})
    local ok2 = pcall(setmetatable, string, {})
    assert(not ok1 and not ok2, "protected metatables cannot be replaced")
    assert(getmetatable(_G) == false and getmetatable(string) == false and type(getmetatable(process.event)) ~= "table")
    assert(getmetatable("") == false, "the string metatable is locked")
    local ok3 = pcall(function() return getmetatable("").__index end)
    assert(not ok3)
    local ok4 = pcall(function() ("").upper = nil end)
    assert(not ok4)
    local e = errors.new("x")
    assert(type(getmetatable(e)) ~= "table", "userdata metatables are protected")
"#;

#[test]
fn two_processes_in_one_shard_cannot_touch_each_other() {
    let h = Harness::new(1);
    h.entry(
        "test:attacker",
        &format!("return {{ main = function()\n{TRICKS}\nprocess.send('checker', 'go')\nprocess.inbox():receive()\nreturn 'done' end }}"),
    );
    let v = h.ok(r#"
        process.registry.register("checker")
        local pid = process.spawn_monitored("test:attacker", "app:processes")
        local go = process.listen("go")
        local ev = process.events()
        local r = channel.select{ go:case_receive(), ev:case_receive() }
        assert(r.channel == go, "attacker failed: " .. tostring(r.value and r.value.result and r.value.result.error))
        assert(secret == nil and leaked == nil, "globals are per process")
        assert(string.upper("a") == "A" and ("b"):upper() == "B")
        assert(string.lower("A") == "a" and string.extra == nil)
        assert(type(table.insert) == "function" and math.pi > 3.14 and os.time() > 0)
        assert(process.event.EXIT == "pid.exit" and process.event.CANCEL == "pid.cancel")
        assert(process.event.LINK_DOWN == "pid.link.down" and type(process.registry.lookup) == "function")
        local n = 0
        for k, v in pairs(process.event) do n = n + 1 end
        assert(n == 4)
        assert(errors.NOT_FOUND == "NotFound")
        assert(type(coroutine.spawn) == "function" and type(channel.new) == "function" and type(payload.new) == "function")
        assert(type(print) == "function")
        for _ in pairs({1}) do end
        process.send(pid, "stop")
        return "isolated"
    "#);
    assert_eq!(v, s("isolated"));
    assert_eq!(h.lua.shard_count(HOST), 1, "both processes shared one shard");
}

#[test]
fn the_sandbox_has_no_way_out() {
    let h = Harness::new(1);
    let v = h.ok(r#"
        assert(package == nil and debug == nil and dofile == nil and loadfile == nil)
        assert(os.execute == nil and os.exit == nil and os.remove == nil and os.getenv == nil)
        assert(string.dump == nil)
        local f, err = load(string.char(27) .. "Lua")
        assert(f == nil and err:find("binary"))
        local f2, err2 = load("return 1", "x", "b")
        assert(f2 == nil and err2:find("binary"))
        assert(load("return 1 + 1")() == 2)
        for _, opt in ipairs({"collect", "stop", "restart", "step", "incremental", "generational"}) do
            local ok = pcall(collectgarbage, opt)
            assert(not ok, "collectgarbage('" .. opt .. "') must be refused")
        end
        assert(type(collectgarbage("count")) == "number")
        -- io exists only on a terminal host
        local ok, ioerr = io.write("x")
        assert(ok == nil and ioerr:kind() == errors.UNAVAILABLE)
        return true
    "#);
    assert_eq!(v, Value::Bool(true));
}

#[test]
fn modules_bind_only_when_listed() {
    let h = Harness::new(1);
    h.lua.add_entry(wippy_lua::LuaEntry::process(
        "test:bare",
        r#"return { main = function()
            assert(time == nil and json == nil and logger == nil and io == nil)
            assert(process and channel and errors and payload and coroutine and string and table and math and utf8 and os)
            local ok, e = pcall(require, "time")
            assert(not ok and e:find("module 'time' not found"), e)
            return require("errors").INVALID
        end }"#,
    ));
    assert_eq!(h.node.exec(HOST, Spawn::entry("test:bare")).unwrap(), s("Invalid"));
}

#[test]
fn imports_bind_library_entries() {
    let h = Harness::new(1);
    h.lua.add_entry(wippy_lua::LuaEntry::library("lib:math2", "local M = {} function M.double(x) return x * 2 end return M"));
    h.lua.add_entry(
        wippy_lua::LuaEntry::process("test:importer", "local m = require('m2') return { main = function(x) return m.double(x) end }")
            .import("m2", "lib:math2"),
    );
    assert_eq!(h.node.exec(HOST, Spawn::entry("test:importer").arg(21)).unwrap(), Value::Int(42));
    let e = h.node.exec(HOST, Spawn::entry("lib:math2")).unwrap_err();
    assert!(e.message.contains("library"), "{}", e.message);
}

#[test]
fn a_built_in_module_is_one_table_per_process() {
    let h = Harness::new(1);
    // a library the process imports requires json too: it gets the importer's table
    h.lua.add_entry(wippy_lua::LuaEntry::library("lib:peek", "local json = require('json') return { json = function() return json end }").modules(&["json"]));
    h.lua.add_entry(
        wippy_lua::LuaEntry::process(
            "test:one",
            r#"local peek = require("peek")
            return { main = function(other)
                local a = require("json")
                assert(require("json") == a, "require answers the same table twice")
                assert(json == a, "the global is that table")
                assert(peek.json() == a, "an imported library's require gets it too")
                assert(require("process") == process, "process is the one the environment starts with")
                json = 5
                assert(require("json") == a, "overwriting the global leaves require's answer")
                json = nil
                assert(json == a and require("json") == a, "a cleared global binds the same table again")
                local fresh = a.mine == nil
                a.mine = true
                assert(require("json").mine and peek.json().mine, "writes stay in the table")
                if not other then return fresh and "clean" or "dirty" end
                -- another process has its own table: this one's write is not in it
                process.spawn_monitored("test:one", "app:processes")
                local ev = process.events():receive()
                assert(ev.result.value == "clean", tostring(ev.result.value or ev.result.error))
                return "ok"
            end }"#,
        )
        .modules(&["json"])
        .import("peek", "lib:peek"),
    );
    let r = h.node.exec(HOST, Spawn::entry("test:one").arg(true));
    assert_eq!(r.unwrap(), s("ok"));
}

#[test]
fn a_function_call_binds_each_of_its_modules_once() {
    // a function's process starts with room for its first library (new_process): the
    // second and third bindings grow its state; each is still one table, its own
    let h = Harness::new(1);
    h.lua.add_entry(
        wippy_lua::LuaEntry::function(
            "test:binds",
            r#"local json = require("json")
            return { call = function()
                assert(require("json") == json and _G.json == json, "one json table")
                local t = require("time")
                assert(require("time") == t and time == t, "one time table")
                assert(channel == require("channel"), "one channel table")
                assert(require("process") == process, "the process table the environment starts with")
                local ok, err = pcall(require, 7)
                assert(not ok and tostring(err):find("string expected, got number", 1, true), tostring(err))
                local fresh = json.mine == nil and t.mine == nil
                json.mine, t.mine = true, true
                return fresh
            end }"#,
        )
        .modules(&["json", "time"]),
    );
    let v = h.ok(r#"
        local first, err = funcs.call("test:binds")
        assert(first == true, tostring(err))
        assert(funcs.call("test:binds") == true, "a second call's tables are its own")
        return "ok"
    "#);
    assert_eq!(v, s("ok"));
}

#[test]
fn a_function_calls_state_is_reused_only_when_the_call_left_nothing_in_it() {
    // A finished call's state goes back to its entry's pool for the next call only when
    // the call left nothing of its own there (vm/coroutine.rs recycle): each mode below
    // leaves something, and the call after it must not see it. `tostring(_G)` tells
    // whether the next call got the same state: a call that leaves nothing passes it on.
    let h = Harness::new(1);
    h.lua.add_entry(
        wippy_lua::LuaEntry::function(
            "test:recycled",
            r#"local json = require("json")
            local count = 0
            return { call = function(mode)
                count = count + 1
                local fresh = count == 1 and rawget(_ENV, "leak") == nil and rawget(_ENV, 1) == nil
                    and _G == _ENV and type(process) == "table" and process.pid ~= nil
                    and rawget(json, "leak") == nil and require("json") == json and time ~= json
                if mode == "global" then leak = 1
                elseif mode == "rawset" then rawset(_ENV, "leak", 1)
                elseif mode == "module" then json.leak = 1
                elseif mode == "module_cleared" then json.leak = 1; json.leak = nil
                elseif mode == "G" then _G = nil
                elseif mode == "process" then process = {}
                elseif mode == "no_process" then process = nil
                elseif mode == "swap" then time = json
                elseif mode == "index" then _ENV[1] = coroutine.running()
                elseif mode == "bound" then local _ = time.now() -- a global bound to its proxy
                end
                return { fresh = fresh, g = tostring(_G) }
            end }"#,
        )
        .modules(&["json", "time"]),
    );
    let v = h.ok(r#"
        local modes = { "none", "none", "global", "none", "rawset", "none", "module", "none",
            "module_cleared", "none", "G", "none", "process", "none", "no_process", "none",
            "swap", "none", "index", "none", "bound", "bound", "none" }
        local seen = {}
        for i, mode in ipairs(modes) do
            local r, err = funcs.call("test:recycled", mode)
            assert(r, tostring(err))
            assert(r.fresh, "call " .. i .. " (after '" .. tostring(modes[i - 1]) .. "') saw what the call before it left")
            seen[i] = r.g
        end
        assert(seen[1] == seen[2], "a call that left nothing passes its state on")
        assert(seen[21] == seen[22], "a global bound to a module's proxy is the state's own")
        return "ok"
    "#);
    assert_eq!(v, s("ok"));
}

#[test]
fn a_reused_call_state_has_none_of_the_last_calls_channels() {
    // A call that listened, took its inbox and left a message in a listen channel passes
    // its state on (recycle lets its channels go): the next call's channels are new ones,
    // with nothing in them.
    let h = Harness::new(1);
    h.lua.add_entry(wippy_lua::LuaEntry::function(
        "test:listens",
        r#"return { call = function(mode)
            local fresh = true
            local x = process.listen("x")
            if mode ~= "first" then
                local r = channel.select { x:case_receive(), default = true }
                local r2 = channel.select { process.inbox():case_receive(), default = true }
                fresh = r.default == true and r2.default == true
            end
            local me = process.pid()
            process.inbox()
            process.send(me, "x", "leftover")
            process.send(me, "z", "go")
            process.listen("z"):receive() -- "x" is routed to its channel while it waits
            return { fresh = fresh, g = tostring(_G) }
        end }"#,
    ));
    let v = h.ok(r#"
        local a = funcs.call("test:listens", "first")
        local b, err = funcs.call("test:listens", "again")
        assert(b, tostring(err))
        assert(b.fresh, "the second call found what the first left in its channels")
        local c = funcs.call("test:listens", "again")
        assert(c.fresh, "the third call found what the second left in its channels")
        assert(a.g == b.g and b.g == c.g, "a call that listened, took its inbox and received passes its state on")
        return "ok"
    "#);
    assert_eq!(v, s("ok"));
}

#[test]
fn a_runtime_error_in_one_process_leaves_its_neighbours_alone() {
    let h = Harness::new(1);
    h.entry("test:victim", "return { main = function() local m = process.inbox():receive() return m:payload():data() + 1 end }");
    let v = h.ok(r#"
        local pid = process.spawn_monitored("test:victim", "app:processes")
        local ok = pcall(function() local t = nil; return t.x end)
        assert(not ok)
        process.send(pid, "n", 41)
        local e = process.events():receive()
        return e.result.value
    "#);
    assert_eq!(v, Value::Int(42));
}

#[test]
fn compiled_once_per_entry_version() {
    let h = Harness::new(2);
    h.entry("test:tiny", "return { main = function() return 1 end }");
    for _ in 0..50 {
        h.node.exec(HOST, Spawn::entry("test:tiny")).unwrap();
    }
    let before = h.lua.compile_count();
    for _ in 0..50 {
        h.node.exec(HOST, Spawn::entry("test:tiny")).unwrap();
    }
    assert_eq!(h.lua.compile_count(), before, "spawning again never recompiles");
    let mut e = wippy_lua::LuaEntry::process("test:tiny", "return { main = function() return 2 end }").modules(ALL_MODULES);
    e.version = 2;
    h.lua.add_entry(e);
    assert_eq!(h.node.exec(HOST, Spawn::entry("test:tiny")).unwrap(), Value::Int(2));
    assert_eq!(h.lua.compile_count(), before + 1);
}

#[test]
fn gc_metamethods_never_run() {
    // A finalizer would run inside whichever process of the shard happens to be allocating
    // when its object is collected, with that process's identity: so, like Wippy, __gc
    // is never called (the metatable keeps the field, and is set as given).
    let h = Harness::new(1);
    let v = h.ok(r#"
        local ran = {}
        local mt = { __gc = function() ran[1] = true end }
        local kept = setmetatable({}, mt)
        assert(getmetatable(kept) == mt and rawget(mt, "__gc") ~= nil)
        do setmetatable({}, mt) end
        for i = 1, 200000 do local _ = { i, i, i } end -- several full collections
        return ran[1] == nil
    "#);
    assert_eq!(v, Value::Bool(true));
}
