//! SPEC §6.2: channels, select, coroutine.spawn, and blocking inside user coroutines.
mod common;
use common::*;
use wippy_runtime::Value;

#[test]
fn unbuffered_and_buffered_channels() {
    let h = Harness::new(1);
    let v = h.ok(r#"
        local ch = channel.new()
        local got = {}
        coroutine.spawn(function() for i = 1, 3 do ch:send(i) end ch:close() end)
        while true do
            local v, ok = ch:receive()
            if not ok then break end
            got[#got + 1] = v
        end
        local b = channel.new(2)
        assert(b:send("a") and b:send("b"))
        local x = b:receive()
        local y = b:receive()
        return table.concat(got, ",") .. "|" .. x .. y
    "#);
    assert_eq!(v, s("1,2,3|ab"));
}

#[test]
fn closed_channels() {
    let h = Harness::new(1);
    let v = h.ok(r#"
        local ch = channel.new(1)
        ch:send(7)
        ch:close()
        ch:close() -- idempotent
        local v, ok = ch:receive()
        assert(v == 7 and ok == true, "buffered values drain after close")
        local v2, ok2 = ch:receive()
        assert(v2 == nil and ok2 == false)
        local okp, err = pcall(ch.send, ch, 1)
        assert(not okp and tostring(err):find("closed"), tostring(err))
        -- a blocked sender is woken with an error when the channel closes
        local u = channel.new()
        local res = channel.new(1)
        coroutine.spawn(function()
            local ok3, e3 = pcall(u.send, u, "x")
            res:send(ok3 and "sent" or "raised")
        end)
        coroutine.spawn(function() u:close() end)
        return res:receive()
    "#);
    assert_eq!(v, s("raised"));
}

#[test]
fn select_order_default_and_send_cases() {
    let h = Harness::new(1);
    let v = h.ok(r#"
        local a, b = channel.new(1), channel.new(1)
        a:send("A") b:send("B")
        local r = channel.select{ b:case_receive(), a:case_receive() }
        assert(r.channel == b and r.value == "B" and r.ok, "first ready case in order wins")
        local d = channel.select({ channel.new():case_receive() }, true)
        assert(d.default == true and d.ok == true)
        local d2 = channel.select{ channel.new():case_receive(), default = true }
        assert(d2.default)
        local out = channel.new(1)
        local s1 = channel.select{ out:case_send(5) }
        assert(s1.channel == out and s1.ok)
        assert(out:receive() == 5)
        -- blocking select woken by another coroutine
        local c = channel.new()
        coroutine.spawn(function() c:send("late") end)
        local r2 = channel.select{ channel.new():case_receive(), c:case_receive() }
        assert(r2.channel == c and r2.value == "late")
        -- closed channel case
        local z = channel.new() z:close()
        local r3 = channel.select{ z:case_receive() }
        assert(r3.channel == z and r3.ok == false)
        -- select on time.after and the inbox
        local t = time.after("5ms")
        local r4 = channel.select{ process.inbox():case_receive(), t:case_receive() }
        assert(r4.channel == t)
        return true
    "#);
    assert_eq!(v, Value::Bool(true));
}

#[test]
fn blocking_inside_user_coroutines() {
    let h = Harness::new(1);
    let v = h.ok(r#"
        local me = process.pid()
        process.send(me, "hello", "world")
        -- a runtime wait inside a plain coroutine passes up to the scheduler
        local f = coroutine.wrap(function()
            local m = process.inbox():receive()
            time.sleep("1ms")
            coroutine.yield(m:payload():data())
            return "second"
        end)
        local first = f()
        local second = f()
        local co = coroutine.create(function(x)
            local y = coroutine.yield(x + 1)
            time.sleep(1000)
            return y * 2
        end)
        local ok1, a = coroutine.resume(co, 1)
        local ok2, b = coroutine.resume(co, 10)
        assert(ok1 and ok2 and a == 2 and b == 20 and coroutine.status(co) == "dead")
        local bad = coroutine.wrap(function() error("inner", 0) end)
        local okb, eb = pcall(bad)
        assert(not okb and eb == "inner")
        return first .. "/" .. second
    "#);
    assert_eq!(v, s("world/second"));
}

#[test]
fn many_coroutines_cooperate() {
    let h = Harness::new(1);
    let v = h.ok(r#"
        local results = channel.new(100)
        for i = 1, 50 do
            -- SPEC 12.5: no arguments reach the function (a closure carries them), and the
            -- result is the task's coroutine, a handle that cannot be resumed by hand
            local th = coroutine.spawn(function(...)
                assert(select('#', ...) == 0)
                time.sleep(1000 * (50 - i))
                results:send(i)
            end, "ignored")
            assert(type(th) == "thread")
            local ok, why = coroutine.resume(th)
            assert(ok == false and why == "cannot resume a spawned task")
        end
        local sum = 0
        for _ = 1, 50 do sum = sum + results:receive() end
        return sum
    "#);
    assert_eq!(v, Value::Int(1275));
}

#[test]
fn bad_arguments_raise_in_luas_words() {
    let h = Harness::new(1);
    let v = h.ok(r#"
        local ok, e = pcall(channel.new, "x")
        assert(not ok and tostring(e):find("bad argument #1 to 'new'"), tostring(e))
        local ok2, e2 = pcall(process.listen, 5)
        assert(not ok2 and e2:find("bad argument #1 to 'listen' %(string expected, got number%)"), e2)
        local ok3, e3 = pcall(coroutine.spawn, nil)
        assert(not ok3 and e3:find("function expected"))
        local ok4, e4 = pcall(require, "nope")
        assert(not ok4 and e4:find("module 'nope' not found"), e4)
        -- receive is a C function: the same words, and the caller's line in front
        local ch = channel.new()
        local ok5, e5 = pcall(ch.receive, {})
        assert(not ok5 and e5:find("bad argument #1 to 'receive' %(channel expected, got table%)"), e5)
        local ok6, e6 = pcall(function() return ch.receive(5) end)
        assert(not ok6 and e6:find(":%d+: bad argument #1 to 'receive' %(channel expected, got number%)"), e6)
        local ok7, e7 = pcall(function() return ch.receive() end)
        assert(not ok7 and e7:find("%(channel expected, got nil%)"), e7)
        return true
    "#);
    assert_eq!(v, Value::Bool(true));
}

#[test]
fn a_task_made_ready_between_direct_waits_runs_before_main_waits_again() {
    // main's receive on a listen channel waits right in Rust while nothing else can run;
    // a task spawned between two such waits must run first (it sends what main waits for)
    let h = Harness::new(1);
    let v = h.ok(
        r#"
        local me = process.pid()
        local ch = process.listen("x")
        local got = {}
        for round = 1, 20 do
            process.send(me, "x", round * 10)
            got[#got + 1] = ch:receive()
            coroutine.spawn(function() process.send(me, "x", round * 10 + 1) end)
            got[#got + 1] = ch:receive()
        end
        return table.concat(got, ",")
    "#,
    );
    let want: Vec<String> = (1..=20).flat_map(|r| [format!("{}", r * 10), format!("{}", r * 10 + 1)]).collect();
    assert_eq!(v, s(&want.join(",")));
}

/// A select's waiter on a channel that does not fire is taken out when the select
/// returns: a service looping on `select { inbox, events }` whose events channel never
/// fires once kept one dead record per select (~300 bytes a message, found by the HTTP
/// benchmark: a counter service grew to 130 MB).
#[test]
fn a_select_leaves_nothing_behind_on_channels_that_did_not_fire() {
    let h = Harness::new(1);
    let v = h.ok(r#"
        local inbox, quiet = process.inbox(), channel.new()
        local me = process.pid()
        -- a message to itself: the select blocks until the runtime delivers it (a service
        -- waiting on its inbox and a channel that never fires)
        local function round(i) process.send(me, "tick", i); return channel.select { inbox:case_receive(), quiet:case_receive() } end
        for i = 1, 2000 do local r = round(i); assert(r.channel == inbox and r.value:payload():data() == i) end
        local before = collectgarbage("count")
        for i = 1, 20000 do round(i) end
        local grown = collectgarbage("count") - before
        -- and the quiet channel still works: its only waiter now is a live one
        coroutine.spawn(function() quiet:send("late") end)
        local r = channel.select { quiet:case_receive() }
        return { grown_kb = grown, late = r.value }
    "#);
    let t = match &v { Value::Table(t) => t.clone(), other => panic!("{other:?}") };
    let grown = match t.get_str("grown_kb") { Some(Value::Float(f)) => *f, Some(Value::Int(i)) => *i as f64, other => panic!("{other:?}") };
    assert!(grown < 1024.0, "20,000 selects grew the VM by {grown} KB (a dead waiter each would be ~6,000 KB)");
    assert_eq!(t.get_str("late"), Some(&s("late")));
}
