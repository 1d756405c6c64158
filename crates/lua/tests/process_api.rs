//! SPEC §4 / §6.1 through Lua: exit results, messages and routing, lifecycle events,
//! links, monitors, names, options, spawners.
mod common;
use common::*;
use wippy_runtime::{ErrorKind, Value};

#[test]
fn exit_results_follow_the_table() {
    let h = Harness::new(2);
    assert_eq!(h.ok("return 42"), Value::Int(42));
    assert_eq!(h.ok("return 'x', nil"), s("x"));
    assert_eq!(h.ok("return"), Value::Nil);
    let e = h.err("return nil, 'boom'");
    assert_eq!((e.kind, e.message.as_str(), e.retryable), (ErrorKind::Internal, "boom", Some(false)));
    let e = h.err("return nil, errors.new{message = 'gone', kind = errors.NOT_FOUND, retryable = true}");
    assert_eq!((e.kind, e.message.as_str(), e.retryable), (ErrorKind::NotFound, "gone", Some(true)));
    let e = h.err("error('bad thing')");
    assert_eq!((e.kind, e.retryable), (ErrorKind::Internal, None), "a crash may be restarted");
    assert!(e.message.ends_with("bad thing"), "{}", e.message);
    assert!(e.message.contains(":2:"), "error keeps the user's line: {}", e.message);
    let e = h.err("error(errors.new{message = 'typed', kind = errors.CONFLICT})");
    assert_eq!((e.kind, e.message.as_str()), (ErrorKind::Conflict, "typed"));
    // an error in a spawned coroutine ends the process too
    let e = h.err("coroutine.spawn(function() error('in a coroutine', 0) end) time.sleep('10ms') return 1");
    assert_eq!(e.message, "in a coroutine");
    // deadlock: every coroutine blocked on local channels
    let e = h.err("local ch = channel.new() ch:receive()");
    assert!(e.message.starts_with("deadlock"), "{}", e.message);
    // a result that cannot leave the process
    let e = h.err("return function() end");
    assert_eq!(e.kind, ErrorKind::Invalid);
    assert!(e.message.contains("function"), "{}", e.message);
    // main returning while other coroutines wait discards them
    assert_eq!(h.ok("coroutine.spawn(function() process.inbox():receive() end) return 'done'"), s("done"));
}

#[test]
fn method_and_arguments() {
    let h = Harness::new(1);
    let r = h.run_chunk("return { main = function(a, b) return a .. ':' .. b end }", vec![s("x"), Value::Int(3)]);
    assert_eq!(r.unwrap(), s("x:3"));
    h.lua.add_entry(wippy_lua::LuaEntry::process("test:m", "return { run = function(x) return x * 2 end }").method("run"));
    let r = h.node.exec(HOST, wippy_runtime::Spawn::entry("test:m").arg(21));
    assert_eq!(r.unwrap(), Value::Int(42));
    let r = h.run_chunk("return function(x) return x + 1 end", vec![Value::Int(1)]);
    assert_eq!(r.unwrap(), Value::Int(2));
    let e = h.run_chunk("return {}", vec![]).unwrap_err();
    assert!(e.message.contains("has no function 'main'"), "{}", e.message);
}

#[test]
fn syntax_error_names_file_and_line() {
    let h = Harness::new(1);
    h.lua.add_entry(wippy_lua::LuaEntry::process("test:bad", "local x = 1\nlocal y = = 2\nreturn {}").chunk_name("src/bad.lua"));
    let e = h.node.exec(HOST, wippy_runtime::Spawn::entry("test:bad")).unwrap_err();
    assert_eq!(e.kind, ErrorKind::Invalid);
    assert!(e.message.contains("src/bad.lua:2:"), "{}", e.message);
}

#[test]
fn send_receive_between_processes_in_order() {
    let h = Harness::new(2);
    assert_eq!(h.echo_in_order(100), s("ok"));
}

#[test]
fn routing_listen_then_inbox_then_wait() {
    let h = Harness::new(1);
    let v = h.ok(r#"
        local me = process.pid()
        process.send(me, "a", 1)
        process.send(me, "b", 2)
        process.send(me, "a", 3)
        -- nothing subscribed yet: all wait in the mailbox, in order
        local la = process.listen("a")
        assert(la == process.listen("a"), "listen returns the very same channel")
        assert(process.inbox() == process.inbox(), "inbox is stable")
        local x = la:receive()
        local m = process.inbox():receive()
        local y = la:receive()
        assert(m:topic() == "b" and m:payload():data() == 2, "b went to the inbox")
        -- unlisten: later 'a' messages fall back to the inbox
        assert(process.unlisten(la) == true)
        local _, ok = la:receive()
        assert(ok == false, "unlisten closes the channel")
        process.send(me, "a", 4)
        local m2 = process.inbox():receive()
        assert(m2:topic() == "a" and m2:payload():data() == 4)
        return x * 100 + y
    "#);
    assert_eq!(v, Value::Int(103));
}

#[test]
fn message_objects_and_payload_shapes() {
    let h = Harness::new(1);
    let v = h.ok(r#"
        local me = process.pid()
        process.send(me, "many", 1, "two", {3})
        process.send(me, "none")
        local m = process.inbox():receive()
        assert(m:from() == me, "from is the sender")
        local ps = m:payload()
        assert(#ps == 3 and ps[2]:data() == "two" and ps[3]:data()[1] == 3)
        local n = process.inbox():receive()
        assert(n:payload() == nil)
        local ch = process.listen("multi")
        process.send(me, "multi", "a", "b")
        local arr = ch:receive()
        assert(arr[1] == "a" and arr[2] == "b")
        -- no payload: nil on a plain listen channel (handed straight to a direct wait),
        -- a message object on a message channel
        local nch = process.listen("empty")
        process.send(me, "empty")
        local nv, nok = nch:receive()
        assert(nv == nil and nok == true, "a message without payload gives nil, true")
        local ech = process.listen("emptymsg", {message = true})
        process.send(me, "emptymsg")
        local em = ech:receive()
        assert(em:topic() == "emptymsg" and em:payload() == nil)
        local mch = process.listen("withmsg", {message = true})
        process.send(me, "withmsg", {k = "v"})
        local mm = mch:receive()
        assert(mm:topic() == "withmsg" and mm:payload():data().k == "v")
        local p = payload.new({z = 1})
        process.send(me, "pl", p)
        local got = process.listen("pl"):receive()
        return got.z
    "#);
    assert_eq!(v, Value::Int(1));
}

#[test]
fn listen_channel_buffers_one_and_full_channel_does_not_block_others() {
    let h = Harness::new(1);
    let v = h.ok(r#"
        local me = process.pid()
        local a = process.listen("a")
        local b = process.listen("b")
        process.send(me, "a", 1)
        process.send(me, "a", 2)
        process.send(me, "b", "x")
        -- 'a' holds one; the second waits; 'b' is not held up behind it
        local bv = b:receive()
        local a1 = a:receive()
        local a2 = a:receive()
        return bv .. a1 .. a2
    "#);
    assert_eq!(v, s("x12"));
}

#[test]
fn a_deep_mailbox_backlog_is_taken_in_order_without_going_quadratic() {
    // 50,000 messages wait in the mailbox (they arrive while the process waits on another
    // channel), then are taken through select and receive. Each arrival and each take
    // used to go over the whole backlog: 50,000 of them took minutes, far past the
    // harness's bound; each is now constant work.
    let h = Harness::new(2);
    h.entry("test:flooder", r#"return { main = function(to, n)
        for i = 1, n do process.send(to, "x", i) end
        process.send(to, "go", true)
    end }"#);
    let v = h.ok(r#"
        local n = 50000
        local inbox, go, never = process.inbox(), process.listen("go"), channel.new()
        process.spawn("test:flooder", "app:processes", process.pid(), n)
        go:receive()
        for i = 1, n // 2 do
            local r = channel.select { inbox:case_receive(), never:case_receive() }
            assert(r.channel == inbox and r.value:payload():data() == i, "item " .. i)
        end
        for i = n // 2 + 1, n do
            assert(inbox:receive():payload():data() == i, "item " .. i)
        end
        return "ok"
    "#);
    assert_eq!(v, s("ok"));
}

#[test]
fn pending_items_for_a_full_channel_hold_back_only_their_own_channel() {
    let h = Harness::new(1);
    h.entry("test:quick", "return { main = function() return 1 end }");
    let v = h.ok(r#"
        local me = process.pid()
        local a = process.listen("a")
        -- 'a' holds one; the rest of 'a' waits, interleaved with inbox items and an event
        for i = 1, 4 do process.send(me, "a", i); process.send(me, "b", i) end
        local t = process.spawn_monitored("test:quick", "app:processes")
        local got = {}
        -- the inbox's items are not held up behind 'a''s, nor the exit event
        for i = 1, 4 do got[#got + 1] = "b" .. process.inbox():receive():payload():data() end
        local ev = process.events():receive()
        got[#got + 1] = ev.kind
        for i = 1, 4 do got[#got + 1] = "a" .. a:receive() end
        return table.concat(got, " ")
    "#);
    assert_eq!(v, s("b1 b2 b3 b4 pid.exit a1 a2 a3 a4"));
}

#[test]
fn send_errors() {
    let h = Harness::new(1);
    let v = h.ok(r#"
        local ok, err = process.send("{app:processes|0xfffff}", "t", 1)
        assert(ok == nil and err:kind() == errors.NOT_FOUND, tostring(err))
        local ok2, err2 = process.send("no-such-name", "t", 1)
        assert(ok2 == nil and err2:kind() == errors.NOT_FOUND)
        local ok3, err3 = process.send(process.pid(), "@system", 1)
        assert(ok3 == nil and err3:kind() == errors.INVALID)
        local ok4, err4 = process.send(process.pid(), "t", {f = function() end})
        assert(ok4 == nil and err4:kind() == errors.INVALID)
        assert(tostring(err4):find("field 'f'"), tostring(err4))
        local ok5, err5 = process.send(process.pid(), "t", channel.new())
        assert(ok5 == nil and tostring(err5):find("channel"), tostring(ok5) .. " " .. tostring(err5))
        local t = {} t.self = t
        local ok6, err6 = process.send(process.pid(), "t", t)
        assert(ok6 == nil and tostring(err6):find("cycle"))
        local ok7, err7 = process.send("{garbage", "t")
        assert(ok7 == nil and err7:kind() == errors.INVALID)
        local ok8, msg8 = pcall(process.send, 42, "t")
        assert(not ok8 and msg8:find("bad argument #1 to 'send' %(string expected, got number%)"), msg8)
        -- the path names every level, and the payload's position
        local ok9, err9 = process.send(process.pid(), "t", 1, {a = {5, {b = coroutine.create(print)}}})
        assert(ok9 == nil and tostring(err9):find("payload 2: field 'a.2.b': a coroutine cannot be sent to another process", 1, true), tostring(err9))
        -- error objects cross, inside tables too, with kind and message
        assert(process.send(process.pid(), "e", {e = errors.new({kind = errors.NOT_FOUND, message = "gone"}), list = {errors.new("inner")}}))
        local m = process.inbox():receive()
        local d = m:payload():data()
        assert(m:topic() == "e" and d.e:kind() == errors.NOT_FOUND and d.e:message() == "gone", tostring(d.e))
        assert(d.list[1]:message() == "inner", tostring(d.list[1]))
        return true
    "#);
    assert_eq!(v, Value::Bool(true));
}

#[test]
fn values_survive_the_copy() {
    let h = Harness::new(1);
    let v = h.ok(r#"
        local me = process.pid()
        local ch = process.listen("v")
        local src = {1, 2.5, "bin\0ary", true, nested = {deep = {x = 9}}, [10] = "sparse", e = errors.new{message = "m", kind = errors.TIMEOUT}}
        process.send(me, "v", src)
        src.nested.deep.x = 0 -- the copy must not change
        local got = ch:receive()
        assert(math.type(got[1]) == "integer" and math.type(got[2]) == "float")
        assert(got[3] == "bin\0ary" and #got[3] == 7)
        assert(got[4] == true and got[10] == "sparse")
        assert(got.nested.deep.x == 9)
        assert(got.e:kind() == errors.TIMEOUT and got.e:message() == "m")
        return true
    "#);
    assert_eq!(v, Value::Bool(true));
}

#[test]
fn spawn_monitor_exit_events() {
    let h = Harness::new(2);
    h.entry("test:ok", "return { main = function(x) return x * 2 end }");
    h.entry("test:fail", "return { main = function() error(errors.new{message = 'nope', kind = errors.INTERNAL}) end }");
    let v = h.ok(r#"
        local ev = process.events()
        local p1 = process.spawn_monitored("test:ok", "app:processes", 21)
        local e1 = ev:receive()
        assert(e1.kind == process.event.EXIT and e1.from == p1, e1.kind)
        assert(e1.result.value == 42 and type(e1.at) == "number")
        local p2 = process.spawn_monitored("test:fail", "app:processes")
        local e2 = ev:receive()
        assert(e2.from == p2 and e2.result.error:message() == "nope")
        local r, err = process.exec("test:ok", "app:processes", 5)
        assert(r == 10 and err == nil)
        local r2, err2 = process.exec("test:fail", "app:processes")
        assert(r2 == nil and err2:message() == "nope")
        local bad, berr = process.spawn("test:missing", "app:processes")
        assert(bad == nil and berr:kind() == errors.NOT_FOUND)
        local bad2, berr2 = process.spawn("test:ok", "no:host")
        assert(bad2 == nil and berr2:kind() == errors.NOT_FOUND)
        local m, merr = process.monitor("{app:processes|0xfffff}")
        assert(m == nil and merr)
        return true
    "#);
    assert_eq!(v, Value::Bool(true));
}

#[test]
fn links_trap_and_cascade() {
    let h = Harness::new(2);
    h.entry("test:crash", "return { main = function() time.sleep('5ms') error('crash', 0) end }");
    h.entry("test:normal", "return { main = function() return 1 end }");
    // trap_links on: LINK_DOWN arrives as an event
    let v = h.ok(r#"
        assert(process.set_options({trap_links = true}) == true)
        assert(process.get_options().trap_links == true)
        local n = process.spawn_linked("test:normal", "app:processes")
        local p = process.spawn_linked("test:crash", "app:processes")
        local e = process.events():receive()
        assert(e.kind == process.event.LINK_DOWN and e.from == p, e.kind)
        return e.result.error:message()
    "#);
    assert_eq!(v, s("crash"));
    // trap_links off: the linked failure kills this process
    let e = h.err(r#"
        process.spawn_linked("test:crash", "app:processes")
        process.inbox():receive()
    "#);
    assert_eq!(e.message, "linked process failed");
    // options errors
    let v = h.ok(r#"
        local ok, err = process.set_options(5)
        assert(ok == false and err)
        local ok2, err2 = process.set_options({nope = true})
        assert(ok2 == false and tostring(err2):find("nope"))
        local ok3, err3 = process.set_options({trap_links = "yes"})
        assert(ok3 == false and err3)
        return process.get_options().upgradable
    "#);
    assert_eq!(v, Value::Bool(false));
}

#[test]
fn cancel_and_terminate() {
    let h = Harness::new(2);
    h.entry("test:cancellable", r#"return { main = function()
        local e = process.events():receive()
        return e.kind .. "/" .. e.reason .. "/" .. (e.from ~= "" and "from" or "none")
    end }"#);
    h.entry("test:stuck", "return { main = function() process.inbox():receive() end }");
    let v = h.ok(r#"
        local r = nil
        local pid = process.spawn_monitored("test:cancellable", "app:processes")
        process.cancel(pid, "please")
        local e = process.events():receive()
        local pid2 = process.spawn_monitored("test:stuck", "app:processes")
        assert(process.terminate(pid2) == true)
        local e2 = process.events():receive()
        return e.result.value .. "|" .. e2.result.error:message()
    "#);
    assert_eq!(v, s("pid.cancel/please/from|process terminated"));
}

#[test]
fn names() {
    let h = Harness::new(2);
    h.entry("test:named", r#"return { main = function()
        process.registry.register("svc")
        process.send(process.registry.lookup("boss"), "ready", process.pid())
        process.inbox():receive()
    end }"#);
    let v = h.ok(r#"
        local reg = process.registry
        assert(reg.register("boss") == true)
        assert(reg.register("boss") == true, "same name, same pid again is fine")
        local pid = process.spawn("test:named", "app:processes")
        local got = process.listen("ready"):receive()
        assert(got == pid and reg.lookup("svc") == pid)
        local ok, err = reg.register("svc")
        assert(ok == nil and err:kind() == errors.ALREADY_EXISTS)
        local ok2, err2 = reg.lookup("nobody")
        assert(ok2 == nil and err2:kind() == errors.NOT_FOUND)
        assert(reg.unregister("boss") == true and reg.unregister("boss") == false)
        assert(reg.LOCAL == 0 and reg.STRONG == 3)
        process.send("svc", "bye")
        process.terminate("svc")
        return true
    "#);
    assert_eq!(v, Value::Bool(true));
}

#[test]
fn spawner_context_name_and_message() {
    let h = Harness::new(2);
    h.entry("test:ctxchild", r#"return { main = function()
        local m = process.inbox():receive()
        return ctx.get("tenant") .. ":" .. m:payload():data() .. ":" .. tostring(ctx.all().level)
    end }"#);
    let v = h.ok(r#"
        local sp = process.with_context({tenant = "acme"}):with_context({level = 2}):with_message("hello", "hi")
        local r, err = sp:exec("test:ctxchild", "app:processes")
        assert(r, tostring(err))
        local a = process.with_context({}):with_name("single"):spawn("test:ctxchild", "app:processes")
        local b = process.with_context({}):with_name("single"):spawn("test:ctxchild", "app:processes")
        assert(a == b, "with_name reuses the live process")
        process.terminate(a)
        return r
    "#);
    assert_eq!(v, s("acme:hi:2"));
}

#[test]
fn functions_run_as_their_own_process() {
    let h = Harness::new(2);
    h.lua.add_entry(wippy_lua::LuaEntry::function("test:add", "return { call = function(a, b) return { sum = a + b, pid = process.pid() } end }").modules(ALL_MODULES));
    h.lua.add_entry(wippy_lua::LuaEntry::function("test:failfn", "return { call = function() return nil, 'fn failed' end }"));
    let v = h.ok(r#"
        local r, err = funcs.call("test:add", 2, 3)
        assert(r and r.sum == 5, tostring(err))
        assert(r.pid ~= process.pid(), "a function call has its own PID")
        local r2, err2 = funcs.call("test:failfn")
        assert(r2 == nil and err2:message() == "fn failed")
        local f = funcs.async("test:add", 10, 20)
        assert(f:result() == nil and not f:is_complete() and not f:is_canceled())
        local res = f:response():receive()
        assert(res:data().sum == 30 and f:response() == f:channel())
        assert(f:is_complete() and f:result():data().sum == 30 and select(2, f:result()) == nil)
        assert(f:error() == nil and select(2, f:error()) == false)
        -- a failed call: the error object on the channel, result() nil + the error
        local g = funcs.async("test:failfn")
        local gv = g:response():receive()
        assert(getmetatable(gv) == nil or type(gv) == "userdata", type(gv))
        assert(gv:message() == "fn failed" and g:is_complete())
        local gr, ge = g:result()
        assert(gr == nil and ge:message() == "fn failed")
        local ee, failed = g:error()
        assert(failed == true and ee:kind() == errors.INTERNAL and ee:message() == "fn failed" and ee:retryable() == false)
        assert(string.format("%s", ee) == "async call failed: fn failed")
        -- canceled
        local c = funcs.async("test:add", 1, 1)
        c:cancel()
        local cr, ce = c:result()
        assert(cr == nil and ce:kind() == errors.CANCELED and ce:message() == "canceled" and c:is_canceled())
        local r3, err3 = funcs.call("test:missing")
        assert(r3 == nil and err3:kind() == errors.NOT_FOUND)
        -- Wippy's parallel pattern: one select over several futures' channels, as many
        -- times as there are futures, takes each result once (a channel that delivered
        -- stays open: it is never picked again as "closed")
        local f1, f2, f3 = funcs.async("test:add", 1, 0), funcs.async("test:add", 2, 0), funcs.async("test:add", 3, 0)
        local c1, c2, c3 = f1:channel(), f2:channel(), f3:channel()
        local seen = 0
        for _ = 1, 3 do
            local s = channel.select { c1:case_receive(), c2:case_receive(), c3:case_receive() }
            assert(s.ok and s.value, "a future's channel gave no value")
            seen = seen + s.value:data().sum
        end
        assert(seen == 6, seen)
        return true
    "#);
    assert_eq!(v, Value::Bool(true));
}

#[test]
fn a_canceled_caller_cancels_the_function_calls_it_makes() {
    // SPEC 12.4.4 item 3: the callee gets CANCEL "caller context canceled"; funcs.call
    // returns the cancellation at once; a future's callee is canceled too and the future
    // completes with what the callee returns
    let h = Harness::new(2);
    h.lua.add_entry(
        wippy_lua::LuaEntry::process("test:slow", r#"return { main = function(tag)
            process.send("observer", "started", tag)
            local ev = process.events():receive()
            process.send("observer", "slow_got", { tag = tag, kind = ev.kind, reason = ev.reason })
            return "late " .. tag
        end }"#)
        .default_host(HOST),
    );
    h.lua.add_entry(
        wippy_lua::LuaEntry::process("test:caller", r#"return { main = function()
            local f = funcs.async("test:slow", "async")
            local r, err = funcs.call("test:slow", "sync")
            local got = { r = r, kind = err and err:kind(), msg = err and err:message() }
            local res = f:response():receive()
            got.future = res and res:data()
            local ev = process.events():receive()
            got.event, got.reason = ev.kind, ev.reason
            process.send("observer", "caller_got", got)
        end }"#)
        .modules(ALL_MODULES),
    );
    let v = h.ok(r#"
        process.registry.register("observer")
        local started, slow, got = process.listen("started"), process.listen("slow_got"), process.listen("caller_got")
        local caller = process.spawn("test:caller", "app:processes")
        local seen = {}
        seen[started:receive()] = true
        seen[started:receive()] = true
        assert(seen.sync and seen.async)
        assert(process.cancel(caller, "stop"))
        local a, b = slow:receive(), slow:receive()
        for _, s in ipairs({ a, b }) do
            assert(s.kind == process.event.CANCEL and s.reason == "caller context canceled", tostring(s.reason))
        end
        local g = got:receive()
        assert(g.r == nil and g.kind == errors.CANCELED and g.msg == "context canceled", tostring(g.msg))
        assert(g.future == "late async", tostring(g.future))
        assert(g.event == process.event.CANCEL and g.reason == "stop", tostring(g.reason))
        return true
    "#);
    assert_eq!(v, Value::Bool(true));
}

#[test]
fn a_caller_that_ends_cancels_the_calls_still_running() {
    // SPEC 12.4.4: the call runs under the caller's context; a caller terminated mid-call
    // leaves no orphan working on for nobody
    let h = Harness::new(2);
    h.lua.add_entry(
        wippy_lua::LuaEntry::process("test:slow2", r#"return { main = function()
            process.send("observer2", "started", process.pid())
            local ev = process.events():receive()
            process.send("observer2", "slow_got", { kind = ev.kind, reason = ev.reason })
        end }"#)
        .default_host(HOST),
    );
    h.lua.add_entry(wippy_lua::LuaEntry::process("test:caller2", r#"return { main = function() funcs.call("test:slow2") end }"#).modules(ALL_MODULES));
    let v = h.ok(r#"
        process.registry.register("observer2")
        local started, slow = process.listen("started"), process.listen("slow_got")
        local caller = process.spawn("test:caller2", "app:processes")
        started:receive()
        assert(process.terminate(caller))
        local got = slow:receive()
        assert(got.kind == process.event.CANCEL and got.reason == "caller context canceled", tostring(got.reason))
        return true
    "#);
    assert_eq!(v, Value::Bool(true));
}

#[test]
fn listen_waits_see_every_shape_and_order() {
    // main waiting alone on a plain listen channel takes the direct path; other events,
    // other shapes and other waiters must still be routed exactly as SPEC 4.3 says
    let h = Harness::new(2);
    h.entry("test:feeder", r#"return { main = function(to)
        process.send(to, "b", "other")
        process.send(to, "a", 1, 2)
        process.send(to, "a")
        process.send(to, "a", "one")
        process.send(to, "a", "two")
        process.send(to, "a", "three")
    end }"#);
    let v = h.ok(r#"
        local a = process.listen("a")
        local b = process.listen("b")
        process.spawn("test:feeder", "app:processes", process.pid())
        local got = {}
        local multi = a:receive()
        got[#got + 1] = type(multi) == "table" and (multi[1] .. "+" .. multi[2]) or tostring(multi)
        local none, ok = a:receive()
        got[#got + 1] = tostring(none) .. "/" .. tostring(ok)
        got[#got + 1] = a:receive()
        -- a second waiter on the same channel, queued before main: it is served first
        local side = channel.new(1)
        coroutine.spawn(function() side:send(a:receive()) end)
        coroutine.yield()
        got[#got + 1] = a:receive()
        got[#got + 1] = "side:" .. side:receive()
        got[#got + 1] = b:receive()
        return table.concat(got, ",")
    "#);
    assert_eq!(v, s("1+2,nil/true,one,three,side:two,other"));
}

#[test]
fn a_finished_process_coroutine_serves_the_next_process_as_new() {
    // One worker, one shard: the coroutine of a child that returned is reused by a later
    // child. Whatever the one before did (returned, recursed deeply, closed a variable,
    // failed, waited), the next starts clean: its own arguments only, running and
    // yieldable, and its waits and to-be-closed variables work.
    let h = Harness::new(1);
    h.entry(
        "test:child",
        r##"return { main = function(...)
            local parent, kind, a, b = ...
            if kind == "deep" then
                local function f(n) if n == 0 then return 0 end return 1 + f(n - 1) end
                return f(20000)
            elseif kind == "close" then
                local _ <close> = setmetatable({}, { __close = function() process.send(parent, "closed", true) end })
                return
            elseif kind == "fail" then
                error("on purpose")
            end
            local me = coroutine.running()
            process.send(parent, "ready", process.pid())
            local go = process.listen("go"):receive()
            process.send(parent, "check", { n = select("#", ...), a = a, b = b, go = go,
                status = coroutine.status(me), yieldable = coroutine.isyieldable() })
        end }"##,
    );
    let v = h.ok(
        r#"
        local me = process.pid()
        local ready, check, closed = process.listen("ready"), process.listen("check"), process.listen("closed")
        local kinds = { "check", "deep", "check", "close", "check", "fail", "check" }
        local checks, closes = 0, 0
        for round = 1, 10 do
            for i, kind in ipairs(kinds) do
                if kind == "check" then
                    process.spawn("test:child", "app:processes", me, kind, round, i)
                    process.send(ready:receive(), "go", round * 100 + i)
                    local c = check:receive()
                    assert(c.n == 4 and c.a == round and c.b == i and c.go == round * 100 + i, "arguments")
                    assert(c.status == "running" and c.yieldable, "state")
                    checks = checks + 1
                else
                    process.spawn("test:child", "app:processes", me, kind)
                    if kind == "close" then assert(closed:receive() == true) closes = closes + 1 end
                end
            end
        end
        return checks .. "/" .. closes
    "#,
    );
    assert_eq!(v, s("40/10"));
}

#[test]
fn sends_reach_the_destination_written_whatever_was_sent_to_before() {
    // send keeps the last destination it parsed; alternating between PIDs, names and
    // strings made afresh (then collected) must never deliver to the previous one
    let h = Harness::new(1);
    h.entry(
        "test:sink",
        r#"return { main = function(parent, tag)
            local inbox, sum = process.inbox(), 0
            while true do
                local m = inbox:receive()
                if m:topic() == "stop" then break end
                sum = sum + m:payload():data()
            end
            process.send(parent, "sum", tag .. "=" .. sum)
        end }"#,
    );
    let v = h.ok(
        r#"
        local me = process.pid()
        local a = process.spawn("test:sink", "app:processes", me, "a")
        local b = process.spawn("test:sink", "app:processes", me, "b")
        process.registry.register("sink.b", b)
        local want_a, want_b = 0, 0
        for i = 1, 300 do
            local dest
            if i % 3 == 0 then dest = a
            elseif i % 3 == 1 then dest = "sink." .. "b"       -- a name, a new string each time
            else dest = string.sub(" " .. a, 2) end            -- a's PID as a fresh string
            process.send(dest, "n", i)
            if dest == "sink.b" then want_b = want_b + i else want_a = want_a + i end
            if i % 50 == 0 then collectgarbage("count") end
        end
        process.send(a, "stop") process.send(b, "stop")
        local sums = process.listen("sum")
        local s1 = sums:receive()
        local s2 = sums:receive()
        local got = { s1, s2 }
        table.sort(got)
        return got[1] .. " " .. got[2] .. " | a=" .. want_a .. " b=" .. want_b
    "#,
    );
    let v = match v {
        Value::Str(s) => String::from_utf8_lossy(&s).to_string(),
        other => panic!("{other:?}"),
    };
    let (got, want) = v.split_once(" | ").unwrap();
    assert_eq!(got, want, "each sink got exactly the values sent to it");
}

#[test]
fn every_plain_value_and_topic_survives_the_direct_send_and_receive() {
    // send reads its arguments straight from the Lua stack and receive a channel's slots
    // straight from its table (layout.rs): every kind of plain value, short and long
    // strings, non-ASCII topics and destinations, and tables beside them, come out as sent
    let h = Harness::new(1);
    let v = h.ok(
        r##"
        local me = process.pid()
        local long = string.rep("é", 40)                  -- a long string (over 40 bytes)
        local topics = { "t", "tópico", string.rep("x", 60) }
        local values = { 0, -7, 2^53, 1.5, -0.0, 1/0, true, false, "", "short", long, "\0bin\255" }
        local got = {}
        for _, topic in ipairs(topics) do
            local ch = process.listen(topic)
            for i, v in ipairs(values) do
                assert(process.send(me, topic, v))
                local r = ch:receive()
                if r ~= v or math.type(r) ~= math.type(v) then
                    got[#got + 1] = topic .. "#" .. i .. "=" .. tostring(r)
                end
            end
            local m = process.inbox()
            process.unlisten(ch)
            assert(process.send(me, topic, { a = 1, 2 }))
            local msg = m:receive()
            local p = msg:payload():data()
            if msg:topic() ~= topic or p.a ~= 1 or p[1] ~= 2 then got[#got + 1] = topic .. " table" end
        end
        -- a destination given as a fresh non-ASCII name
        process.registry.register("dést", me)
        local ch = process.listen("n")
        assert(process.send("d" .. "ést", "n", 5))
        if ch:receive() ~= 5 then got[#got + 1] = "name" end
        return #got == 0 and "ok" or table.concat(got, " ")
    "##,
    );
    assert_eq!(v, Value::str("ok"));
}

#[test]
fn name_scopes_and_cluster_calls_on_a_node_without_a_cluster() {
    // SPEC §13.5: a node alone is the whole cluster, so every scope is its own table
    let h = Harness::new(2);
    assert_eq!(
        h.ok(r#"
            local r = process.registry
            assert(r.LOCAL == 0 and r.EVENTUAL == 1 and r.CONSISTENT == 2 and r.STRONG == 3)
            assert(r.register("c1", nil, r.CONSISTENT))
            assert(r.lookup("c1") == process.pid())
            assert(r.register("c1", process.pid(), r.STRONG), "same name, same PID: fine")
            local ok, err = r.register("c2", nil, "strong")
            assert(ok == nil and err:kind() == errors.INVALID, tostring(err))
            ok, err = r.register("c2", nil, 9)
            assert(ok == nil and err:kind() == errors.INVALID, tostring(err))
            -- no fences without a cluster
            local f, ferr = r.debug.lookup_with_fence("c1")
            assert(f == nil and ferr:kind() == errors.NOT_FOUND)
            local v, verr = r.debug.validate_fence("c1", 1)
            assert(v == false and verr:message() == "stale fence")
            return "ok"
        "#),
        s("ok")
    );
    h.lua.add_entry(
        wippy_lua::LuaEntry::process(
            "test:sys",
            r#"
            local function main()
                assert(system.node.id() == "local")
                local m = system.cluster.members()
                assert(#m == 1 and m[1].id == "local" and m[1].is_local == true)
                assert(system.cluster.size() == 1 and system.cluster.leader() == "")
                assert(system.node.role() == "non-member" and system.raft.role() == "non-member")
                -- without a cluster, as Wippy without clustering: raft and the address are errors
                local l, lerr = system.raft.is_leader()
                assert(l == nil and lerr:kind() == errors.INTERNAL and lerr:message() == "raft not available")
                assert(select(2, system.raft.stats()):message() == "raft not available")
                local a, aerr = system.node.addr()
                assert(a == nil and aerr:kind() == errors.INTERNAL)
                -- a cluster lock is a STRONG name held by the caller
                assert(system.lock.acquire("l1") == true)
                assert(system.lock.release("l1") == true)
                assert(system.lock.release("l1") == false, "only the holder releases")
                return "ok"
            end
            return { main = main }
        "#,
        )
        .modules(&["system"]),
    );
    let (_pid, watch) = h.node.spawn_watched(HOST, wippy_runtime::Spawn::entry("test:sys")).unwrap();
    assert_eq!(watch.wait_timeout(std::time::Duration::from_secs(20)).unwrap().unwrap(), s("ok"));
}

#[test]
fn each_process_reads_its_own_pid_when_they_take_turns() {
    // process.pid() keeps the last PID's text per thread: two processes of one shard asking
    // in turn (a round trip between each ask) must each get their own, every time
    let h = Harness::new(1);
    h.entry("test:echo_pid", r#"return { main = function(parent)
        local inbox = process.inbox()
        for _ = 1, 20 do
            inbox:receive()
            process.send(parent, "pid", process.pid())
        end
    end }"#);
    let v = h.ok(r#"
        local me = process.pid()
        local child = process.spawn("test:echo_pid", "app:processes", me)
        local replies = process.listen("pid")
        for i = 1, 20 do
            assert(process.pid() == me, "parent, round " .. i .. ": " .. process.pid())
            process.send(child, "ask", i)
            local got = replies:receive()
            assert(got == child, "child, round " .. i .. ": " .. tostring(got) .. " ~= " .. child)
        end
        return "ok"
    "#);
    assert_eq!(v, s("ok"));
}
