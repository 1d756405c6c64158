mod common;
use common::*;
use wippy_runtime::Value;

#[test]
fn returns_a_value() {
    let h = Harness::new(1);
    assert_eq!(h.ok("return 1 + 2"), Value::Int(3));
    assert_eq!(h.ok("return process.pid():sub(1,1)"), s("{"));
}

#[test]
fn type_names_every_type_and_wants_an_argument() {
    // the base library's `type` is ours (its names held as upvalues): it must answer as Lua's
    let h = Harness::new(1);
    let v = h.ok(r##"
        local got = { type(nil), type(false), type(1), type(1.5), type("s"), type({}), type(print or type),
            type(coroutine.running()), type(process.pid()), type(json and json.encode or tostring),
            type(time.now()) }
        local want = { "nil", "boolean", "number", "number", "string", "table", "function", "thread",
            "string", "function", "userdata" }
        for i = 1, #want do assert(got[i] == want[i], i .. ": " .. tostring(got[i])) end
        local ok, err = pcall(function() return type() end)
        assert(not ok and tostring(err):find("bad argument #1 to 'type' (value expected)", 1, true), tostring(err))
        assert(select("#", type(nil)) == 1)
        return "ok"
    "##);
    assert_eq!(v, s("ok"));
}
