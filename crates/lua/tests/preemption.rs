mod common;
use common::*;
use std::time::Duration;
use wippy_runtime::Value;

#[test]
fn echo_under_heavy_preemption() {
    let h = Harness::with(2, Default::default(), |c| c.time_slice(Duration::from_micros(100)));
    h.entry("test:echo", r#"return { main = function()
        local inbox = process.inbox()
        while true do
            local msg = inbox:receive()
            if msg:topic() == "stop" then return "stopped" end
            process.send(msg:from(), "echo", msg:payload():data())
        end
    end }"#);
    for _ in 0..20 {
    let v = h.ok(r#"
        local pid = process.spawn("test:echo", "app:processes")
        local ch = process.listen("echo")
        for i = 1, 2000 do process.send(pid, "ping", i) end
        for i = 1, 2000 do
            local v = ch:receive()
            if v ~= i then return "out of order at " .. i .. ": " .. tostring(v) end
        end
        process.send(pid, "stop")
        return "ok"
    "#);
    assert_eq!(v, s("ok"));
    }
}
