//! The modules of SPEC §5 and §6.3–6.4: errors, payload, time, json, logger, env, ctx,
//! registry, io (terminal host only).
mod common;
use common::*;
use std::time::{Duration, Instant};
use wippy_lua::{LuaEntry, LuaRuntime, RegistryItem, ShardOptions};
use wippy_runtime::{HostConfig, Node, Spawn, Table, Value};

#[test]
fn errors_module() {
    let h = Harness::new(1);
    let v = h.ok(r#"
        local e = errors.new("plain")
        assert(e:message() == "plain" and e:kind() == errors.UNKNOWN and e:retryable() == nil)
        assert(tostring(e) == "plain" and "x: " .. e == "x: plain" and e .. "!" == "plain!")
        local d = errors.new{message = "m", kind = errors.TIMEOUT, retryable = true, details = {code = 7}}
        assert(d:kind() == "Timeout" and d:retryable() == true and d:details().code == 7)
        assert(errors.is(d, errors.TIMEOUT) and not errors.is(d, errors.INVALID))
        -- wrap keeps the inner message; the context shows in %s and stack() (SPEC 12.1.4)
        local w = errors.wrap(d, "while calling")
        assert(w:message() == "m" and tostring(w) == "m" and w:kind() == "Timeout" and w:retryable() == true)
        assert(string.format("%s", w) == "while calling: m", string.format("%s", w))
        local ww = errors.wrap(w, "outer")
        assert(ww:message() == "while calling: m" and string.format("%s", ww) == "outer: while calling: m")
        assert(ww:stack():find("outer\n", 1, true) and ww:stack():find("while calling\n", 1, true), ww:stack())
        local ws = errors.wrap("text", errors.new("ctx"))
        assert(ws:message() == "text" and ws:kind() == "" and ws:retryable() == nil and string.format("%s", ws) == "ctx: text")
        assert(errors.wrap(errors.new{message = "n", retryable = false}, "c"):retryable() == false)
        -- call_stack: a table of frames, innermost first
        local cs = errors.call_stack(e)
        assert(type(cs) == "table" and type(cs.thread) == "string" and cs.frames[1].level == 0, "call_stack")
        assert(cs.frames[1].source:find("snippet") and cs.frames[1].line > 0 and type(cs.frames[1].name) == "string")
        assert(cs.frames[1].type == "Lua" or cs.frames[1].type == "G" or cs.frames[1].type == "main")
        assert(errors.call_stack("not an error") == nil)
        assert(e:stack():find("snippet"))
        assert(errors.NOT_FOUND == "NotFound" and errors.LIMIT_EXCEEDED == "LimitExceeded" and errors.UNKNOWN == "")
        assert(string.format("%s", e) == "plain")
        -- errors.new's argument rules
        local ok, bad = pcall(errors.new, {kind = "Weird"})
        assert(not ok and bad:find("message field is required"), bad)
        ok, bad = pcall(errors.new, {message = 5})
        assert(not ok and bad:find("message must be a string"), bad)
        ok, bad = pcall(errors.new, 5)
        assert(not ok and bad:find("expected string or table"), bad)
        local odd = errors.new{message = "m", kind = 7, retryable = "yes"}
        assert(odd:kind() == "" and odd:retryable() == nil)
        -- a kind outside the list is kept as written (Wippy's kinds are strings), survives
        -- wrap and a message, and errors.is matches it
        local weird = errors.new{message = "m", kind = "QuotaExceeded"}
        assert(weird:kind() == "QuotaExceeded" and errors.is(weird, "QuotaExceeded") and not errors.is(weird, ""))
        assert(errors.wrap(weird, "ctx"):kind() == "QuotaExceeded")
        local inbox = process.inbox()
        process.send(process.pid(), "e", weird)
        assert(inbox:receive():payload():data():kind() == "QuotaExceeded")
        assert(errors.new{message = "m", kind = ""}:kind() == "")
        -- details: {} is nil; string keys only; numbers as floats; arrays lose their integer keys
        assert(errors.new{message = "m", details = {}}:details() == nil)
        local dd = errors.new{message = "m", details = {n = 1, s = "x", [3] = "drop", list = {1, 2, k = true}}}:details()
        assert(dd.n == 1.0 and math.type(dd.n) == "float" and dd.s == "x" and dd[3] == nil, "details")
        assert(dd.list[1] == nil and dd.list.k == true)
        -- a module's error says it is not retryable (SPEC 12.1.3)
        local _, se = process.send("{app:processes|0xfffff}", "t", 1)
        assert(se:retryable() == false, tostring(se:retryable()))
        local _, je = json.decode("{")
        assert(je:retryable() == false)
        return true
    "#);
    assert_eq!(v, Value::Bool(true));
}

#[test]
fn timers() {
    let h = Harness::new(2);
    let started = Instant::now();
    let v = h.ok(r#"
        local t0 = time.now()
        time.sleep("20ms")
        local slept = time.now():sub(t0):milliseconds()
        assert(slept >= 19, "slept " .. slept)
        local ch = time.after(1000000) -- 1 ms as nanoseconds
        local at, ok = ch:receive()
        assert(ok and at:unix() > 0)
        local _, ok2 = ch:receive()
        assert(ok2 == false, "after closes its channel")
        local tm = time.timer("1h")
        assert(tm:stop() == true and tm:stop() == false)
        local tm2 = time.timer("1h")
        tm2:reset("2ms")
        local fired = tm2:channel():receive()
        assert(fired)
        local tk = time.ticker("2ms")
        local n = 0
        for _ = 1, 3 do tk:channel():receive() n = n + 1 end
        assert(tk:stop() == true)
        local tk2, terr = time.ticker(0)
        assert(tk2 == nil and terr:kind() == errors.INVALID)
        -- a timer or an after of no time at all is refused as a ticker is (SPEC 12.3)
        local a0, aerr = time.after(0)
        assert(a0 == nil and aerr:kind() == errors.INVALID, tostring(aerr))
        local t0n, t0err = time.timer("-1s")
        assert(t0n == nil and t0err:kind() == errors.INVALID)
        local tm3 = time.timer("1h")
        assert(not pcall(tm3.reset, tm3, 0) and tm3:stop() == true)
        local ok3, e3 = pcall(time.sleep, "soon")
        assert(not ok3 and tostring(e3):find("invalid duration"), tostring(e3))
        return n
    "#);
    assert_eq!(v, Value::Int(3));
    assert!(started.elapsed() < Duration::from_secs(10), "timers took {:?}", started.elapsed());
}

#[test]
fn slow_ticker_reader_loses_ticks_and_nothing_blocks() {
    let h = Harness::new(1);
    let v = h.ok(r#"
        local tk = time.ticker("1ms")
        time.sleep("30ms") -- ~30 ticks happen; the channel holds at most one
        local got = 0
        while true do
            local r = channel.select({ tk:channel():case_receive() }, true)
            if r.default then break end
            got = got + 1
        end
        tk:stop()
        return got
    "#);
    assert_eq!(v, Value::Int(1));
}

#[test]
fn durations_and_times() {
    let h = Harness::new(1);
    let v = h.ok(r#"
        local d = time.parse_duration("1h30m")
        assert(tostring(d) == "1h30m0s" and d:minutes() == 90 and d:hours() == 1.5)
        assert(time.parse_duration("1.5s"):milliseconds() == 1500)
        assert(math.type(time.parse_duration("2us"):nanoseconds()) == "integer")
        local bad, err = time.parse_duration("10 parsecs")
        assert(bad == nil and err:kind() == errors.INVALID)
        local t = time.date(2024, time.MARCH, 5, 7, 8, 9, 0, time.utc)
        assert(t:format(time.RFC3339) == "2024-03-05T07:08:09Z")
        assert(t:format("Mon Jan _2 15:04:05 2006") == "Tue Mar  5 07:08:09 2024")
        assert(t:year() == 2024 and t:month() == 3 and t:day() == 5 and t:weekday() == time.TUESDAY)
        assert(t:year_day() == 65 and t:unix() == 1709622489)
        local p = time.parse(time.DATE_TIME, "2024-03-05 07:08:09")
        assert(p:equal(t) and not p:before(t) and not p:after(t))
        local z = time.fixed_zone("EET", 2 * 3600)
        assert(t:in_location(z):format("15:04 -07:00") == "09:08 +02:00")
        local later = t:add(time.parse_duration("36h"))
        assert(later:sub(t):hours() == 36)
        assert(t:add_date(0, 1, 0):format(time.DATE_ONLY) == "2024-04-05")
        assert(t:truncate(time.HOUR):format(time.TIME_ONLY) == "07:00:00")
        assert(t:round(time.HOUR):format(time.TIME_ONLY) == "07:00:00")
        assert(time.unix(1709622489, 0):utc():format_rfc3339() == "2024-03-05T07:08:09Z")
        local y, m, dd = t:date()
        assert(y == 2024 and m == 3 and dd == 5)
        local x, xerr = time.parse(time.RFC3339, "not a time")
        assert(x == nil and xerr:kind() == errors.INVALID)
        local l, lerr = time.load_location("Mars/Olympus")
        assert(l == nil and lerr:kind() == errors.NOT_FOUND)
        assert(time.load_location("UTC"))
        return true
    "#);
    assert_eq!(v, Value::Bool(true));
}

#[test]
fn json_module() {
    let h = Harness::new(1);
    let v = h.ok(r#"
        local s = json.encode({a = 1, list = {1, 2, 3}, nested = {ok = true}})
        local back = json.decode(s)
        assert(back.a == 1 and #back.list == 3 and back.nested.ok == true)
        assert(json.encode({1, "two"}) == '[1,"two"]')
        local v, err = json.decode("{broken")
        assert(v == nil and err:kind() == errors.INTERNAL)
        local x, xerr = json.encode({f = function() end})
        assert(x == nil and xerr)
        assert(math.type(json.decode("5")) == "integer" and json.decode("2.5") == 2.5)
        -- SPEC 12.10
        assert(json.encode({}) == "[]" and json.encode(nil) == "null" and json.encode({a = {}}) == '{"a":[]}')
        -- numbers as Wippy writes them: a whole float as an integer, Inf and NaN as null
        assert(json.encode({10 / 2, 99.5, 0.1}) == "[5,99.5,0.1]", json.encode({10 / 2, 99.5, 0.1}))
        assert(json.encode({x = math.huge}) == '{"x":null}' and json.encode(0 / 0) == "null")
        local sp, spe = json.encode({1, nil, 3})
        assert(sp == nil and spe:kind() == errors.INTERNAL, tostring(sp))
        local mx, mxe = json.encode({1, a = 2})
        assert(mx == nil and mxe:kind() == errors.INTERNAL)
        local cyc = {} cyc.self = cyc
        local cy, cye = json.encode(cyc)
        assert(cy == nil and cye:kind() == errors.INTERNAL)
        local deep = {} local cur = deep
        for _ = 1, 130 do cur.x = {} cur = cur.x end
        assert(json.encode(deep) == nil)
        local d1, d1e = json.decode("")
        assert(d1 == nil and d1e:kind() == errors.INVALID)
        local d2, d2e = json.decode(5)
        assert(d2 == nil and d2e:kind() == errors.INVALID)
        local d3, d3e = json.decode("null")
        assert(d3 == nil and d3e == nil)
        -- json.validate / validate_string (JSON Schema)
        local schema = { type = "object", properties = { age = { type = "integer", minimum = 0 } }, required = { "age" } }
        assert(json.validate(schema, { age = 3 }) == true)
        local ok1, ve1 = json.validate(schema, { age = -1 })
        assert(ok1 == false and ve1:kind() == errors.INVALID and ve1:retryable() == false, tostring(ve1))
        local ok2, ve2 = json.validate('{"type":"string"}', 5)
        assert(ok2 == false and ve2:kind() == errors.INVALID)
        assert(json.validate('{"type":"string"}', "s") == true)
        assert(json.validate_string(schema, '{"age": 7}') == true)
        local ok3, ve3 = json.validate_string(schema, '{"age": "x"}')
        assert(ok3 == false and ve3:kind() == errors.INVALID)
        local ok4, ve4 = json.validate_string(schema, 5)
        assert(ok4 == false and ve4:kind() == errors.INVALID)
        local ok5, ve5 = json.validate(nil, {})
        assert(ok5 == false and ve5:kind() == errors.INVALID)
        local ok6, ve6 = json.validate(schema, nil)
        assert(ok6 == false and ve6:kind() == errors.INVALID)
        local ok7, ve7 = json.validate(42, {})
        assert(ok7 == false and ve7:kind() == errors.INVALID)
        local ok8, ve8 = json.validate({ type = "nonsense" }, {})
        assert(ok8 == false and ve8:kind() == errors.INVALID, tostring(ve8))
        return true
    "#);
    assert_eq!(v, Value::Bool(true));
}

#[test]
fn logger_env_payload_registry() {
    let h = Harness::new(1);
    h.lua.set_env("APP_MODE", "test");
    let mut meta = Table::new();
    meta.set("type", "config");
    let mut data = Table::new();
    data.set("port", 8080);
    h.lua.add_registry_item(RegistryItem { id: "app:cfg".into(), kind: "registry.entry".into(), meta: Value::table(meta), data: Value::table(data) }).unwrap();
    let v = h.ok(r#"
        logger:info("hello", {k = 1})
        local l = logger:with({req = "r1"}):named("sub")
        l:warn("child logger")
        -- Wippy's os.time{...}: missing hour/min/sec are 0, a missing date part is today's
        assert(os.time({year = 2024, month = 6, day = 15}) == os.time({year = 2024, month = 6, day = 15, hour = 0}))
        assert(os.date("*t", os.time({day = 1})).day == 1 and os.date("*t", os.time({day = 1})).year == os.date("*t").year)
        assert(os.platform == "wippy")
        -- Wippy's table.create: a preallocated table, bounded
        local pre = table.create(8, 2)
        pre[1] = "a"
        assert(#pre == 1 and not pcall(table.create, 1e12))
        local okn, en = pcall(logger.named, logger, "")
        assert(not okn and tostring(en):find("name cannot be empty"), tostring(en))
        print("printed", 1, true)
        assert(env.get("APP_MODE") == "test")
        local miss, merr = env.get("WIPPY_SURELY_UNSET_VARIABLE")
        assert(miss == nil and merr:kind() == errors.NOT_FOUND)
        local p = payload.new({1, 2})
        assert(p:data()[2] == 2)
        local e = registry.get("app:cfg")
        assert(e.kind == "registry.entry" and e.data.port == 8080 and e.meta.type == "config")
        local found = registry.find({kind = "registry.entry", ["meta.type"] = "config"})
        assert(#found == 1 and found[1].id == "app:cfg")
        assert(#registry.find({["meta.type"] = "other"}) == 0)
        local none, nerr = registry.get("app:none")
        assert(none == nil and nerr:kind() == errors.NOT_FOUND)
        return true
    "#);
    assert_eq!(v, Value::Bool(true));
}

#[test]
fn io_on_a_terminal_host() {
    let node = Node::new().unwrap();
    let lua = LuaRuntime::new();
    lua.set_host_options("app:terminal", ShardOptions { grants_io: true, isolated: true, ..Default::default() });
    lua.install(&node.handle());
    node.add_host(HostConfig::new("app:terminal").workers(1)).unwrap();
    lua.add_entry(
        LuaEntry::process(
            "app:cli",
            // the arguments' context key is plumbing: ctx shows only what the caller set
            r#"return { main = function()
                assert(io.write(""))
                assert(next(ctx.all()) == nil and select(2, ctx.get(wippy_args_key)):kind() == errors.NOT_FOUND)
                return #io.args()
            end }"#
                .replace("wippy_args_key", &format!("{:?}", wippy_lua::ARGS_KEY))
                .as_str(),
        )
        .modules(&["io", "ctx"]),
    );
    let mut ctx = Table::new();
    let mut args = Table::new();
    args.push(Value::str("a"));
    args.push(Value::str("b"));
    ctx.set(wippy_lua::ARGS_KEY, Value::table(args));
    let r = node.exec("app:terminal", Spawn::entry("app:cli").context(std::sync::Arc::new(ctx)));
    assert_eq!(r.unwrap(), Value::Int(2));
}

#[test]
fn conversion_errors_read_like_luas_own() {
    let h = Harness::new(1);
    let v = h.ok(r#"
        local ok, e = pcall(errors.wrap, errors.new("x"), {})
        -- through pcall the function has no name in the traceback, as in Lua itself
        assert(not ok and e:find("bad argument #2 to '%S+' %(string expected, got table%)"), e)
        local ok2, e2 = pcall(function() return time.unix("soon") end)
        assert(not ok2 and e2:find("bad argument #1 to 'unix' %(number expected, got string%)"), e2)
        return true
    "#);
    assert_eq!(v, Value::Bool(true));
    let e = h.err("errors.wrap(errors.new('x'), {})");
    assert!(e.message.contains("bad argument #2 to 'wrap' (string expected, got table)"), "{}", e.message);
}

#[test]
fn error_values_are_strings_to_the_string_library() {
    let h = Harness::new(1);
    let v = h.ok(r#"
        local _, err = process.send("{app:processes|0xfffff}", "t", 1)
        assert(string.find(err, "not found"), "find")
        assert(string.match(err, "process (%a+)") == "not")
        assert(string.len(err) == #err:message() and err:message():upper() == string.upper(err))
        assert(string.sub(err, 1, 7) == "process" and select(2, string.gsub(err, "o", "0")) > 0)
        assert(string.format("%s|%d", err, 3) == err:message() .. "|3")
        local e = errors.new("boom")
        assert(string.rep(e, 2, "-") == "boom-boom" and string.byte(e) == 98)
        -- plain strings and numbers as before; other userdata is still refused
        assert(("abc"):upper() == "ABC" and string.len(123) == 3)
        assert(not pcall(string.len, process.inbox()))
        -- method syntax on an error is not the string library's (SPEC 12.1.1)
        assert(not pcall(function() return e:upper() end))
        return true
    "#);
    assert_eq!(v, wippy_runtime::Value::Bool(true));
}

#[test]
fn uuid_module() {
    let h = Harness::new(1);
    let v = h.ok(r#"
        local uuid = require("uuid")
        local function std(s) return type(s) == "string" and #s == 36 and s == s:lower() and s:match("^%x+%-%x+%-%x+%-%x+%-%x+$") ~= nil end
        local a, e = uuid.v4()
        assert(std(a) and e == nil and uuid.version(a) == 4 and uuid.variant(a) == "RFC4122")
        assert(a ~= uuid.v4())
        local t1 = uuid.v1()
        local p1 = uuid.parse(t1)
        assert(std(t1) and p1.version == 1 and #p1.node == 12 and math.abs(p1.timestamp - os.time()) < 5, "v1")
        local t7 = uuid.v7()
        local p7 = uuid.parse(t7)
        assert(p7.version == 7 and p7.node == nil and math.abs(p7.timestamp - os.time()) < 5, "v7")
        assert(uuid.parse(a).timestamp == nil)
        -- name-based: deterministic (RFC 4122 appendix: DNS namespace, "www.example.com")
        local dns = "6ba7b810-9dad-11d1-80b4-00c04fd430c8"
        assert(uuid.v3(dns, "www.example.com") == "5df41881-3aed-3515-88a7-2f4a814cf09e")
        assert(uuid.v5(dns, "www.example.com") == "2ed6657d-e927-568b-95e1-2665a8aea6a2")
        local n, ne = uuid.v5("not-a-uuid", "x")
        assert(n == nil and ne:kind() == errors.INVALID and ne:message() == "invalid namespace UUID" and ne:retryable() == false)
        n, ne = uuid.v3(dns)
        assert(n == nil and ne:message() == "namespace and name must be strings")
        -- accepted forms, case-insensitive
        local up = a:upper()
        assert(uuid.validate(up) and uuid.validate("urn:uuid:" .. a) and uuid.validate("{" .. a .. "}"))
        assert(uuid.validate(a:gsub("-", "")) and not uuid.validate("nope") and not uuid.validate(42))
        assert(uuid.format(up) == a and uuid.format(a, "simple") == a:gsub("-", "") and uuid.format(a, "urn") == "urn:uuid:" .. a)
        local f, fe = uuid.format(a, "weird")
        assert(f == nil and fe:message() == "unsupported format")
        local vv, ve = uuid.version(7)
        assert(vv == nil and ve:message() == "input must be a string" and ve:kind() == errors.INVALID)
        vv, ve = uuid.variant("zz")
        assert(vv == nil and ve:message() == "invalid UUID format")
        assert(uuid.variant("00000000-0000-0000-0000-000000000000") == "NCS")
        return true
    "#);
    assert_eq!(v, Value::Bool(true));
}

#[test]
fn base64_and_hash_modules() {
    let h = Harness::new(1);
    let v = h.ok(r#"
        local base64, hash = require("base64"), require("hash")
        local function hex(s) return (s:gsub(".", function(c) return string.format("%02x", c:byte()) end)) end
        -- base64: standard alphabet with padding, binary-safe, empty in and out
        local e, err = base64.encode("Hello, World!")
        assert(e == "SGVsbG8sIFdvcmxkIQ==" and err == nil, e)
        assert(base64.decode(e) == "Hello, World!")
        assert(base64.decode(base64.encode("\0\255\1")) == "\0\255\1")
        assert(base64.encode("") == "" and base64.decode("") == "")
        local d, de = base64.decode("SGVsbG8*")
        assert(d == nil and de:kind() == errors.INVALID and de:retryable() == false and de:message() == "illegal base64 data at input byte 7", tostring(de))
        d, de = base64.encode({})
        assert(d == nil and de:kind() == errors.INVALID, tostring(de))
        -- digests: lowercase hex, or the raw bytes (RFC 1321, FIPS 180 vectors of "abc")
        assert(hash.md5("abc") == "900150983cd24fb0d6963f7d28e17f72")
        assert(hash.sha1("abc") == "a9993e364706816aba3e25717850c26c9cd0d89d")
        assert(hash.sha256("abc") == "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad")
        assert(hash.sha512("abc"):sub(1, 16) == "ddaf35a193617aba" and #hash.sha512("abc") == 128)
        assert(hex(hash.sha256("abc", true)) == hash.sha256("abc"))
        -- HMACs (RFC 4231 case 2, RFC 2202 case 2)
        assert(hash.hmac_sha256("what do ya want for nothing?", "Jefe") == "5bdcc146bf60754e6a042426089575c75a003f089d2739839dec58b964ec3843")
        assert(hash.hmac_md5("what do ya want for nothing?", "Jefe") == "750c783e6ab0b503eaa86e310a5db738")
        assert(hash.hmac_sha1("what do ya want for nothing?", "Jefe") == "effcdf6ae5eb2fa2d27416d5f184df9c259a7c79")
        assert(hash.hmac_sha512("what do ya want for nothing?", "Jefe"):sub(1, 16) == "164b7a7bfcf819e2")
        local m, me = hash.hmac_sha256("x", nil)
        assert(m == nil and me:kind() == errors.INVALID)
        -- FNV-1 (not 1a), as integers
        assert(hash.fnv32("a") == 0x050c5d7e and string.format("%x", hash.fnv64("a")) == "af63bd4c8601b7be")
        -- PBKDF2 (RFC 6070 case 1), raw bytes; bad parameters are Invalid
        assert(hex(hash.pbkdf2("password", "salt", 1, 20)) == "120fb6cffcf8b32c43e7225256c4f837a86548c9")
        assert(#hash.pbkdf2("password", "salt", 2, 64, "sha512") == 64)
        for _, args in ipairs({ {"", "salt", 1, 20}, {"pw", "", 1, 20}, {"pw", "salt", 0, 20}, {"pw", "salt", 1, 20, "md5"}, {"pw", "salt", 1, 0} }) do
            local k, ke = hash.pbkdf2(table.unpack(args))
            assert(k == nil and ke:kind() == errors.INVALID, tostring(ke))
        end
        return true
    "#);
    assert_eq!(v, Value::Bool(true));
}

#[test]
fn yaml_module() {
    let h = Harness::new(1);
    let v = h.ok(r#"
        local yaml = require("yaml")
        -- keys sorted, as Go's encoder writes a map; field_order first
        local out, err = yaml.encode({ port = 8080, name = "app", tags = { "a", "b" }, addr = ":8080" })
        assert(err == nil and out == 'addr: ":8080"\nname: app\nport: 8080\ntags:\n- a\n- b\n', out)
        out = yaml.encode({ zebra = 1, alpha = 2, name = "test", kind = "demo" }, { field_order = { "name", "kind" }, sort_unordered = true })
        assert(out == "name: test\nkind: demo\nalpha: 2\nzebra: 1\n", out)
        -- decode: types kept; round trip
        local v = yaml.decode("server:\n  host: localhost\n  port: 8080\nfeatures: [auth, logging]\nratio: 3.14\nenabled: true\n")
        assert(v.server.host == "localhost" and math.type(v.server.port) == "integer" and v.server.port == 8080)
        assert(v.features[2] == "logging" and v.ratio == 3.14 and v.enabled == true)
        assert(yaml.decode(yaml.encode(v)).server.port == 8080)
        -- errors
        local r, e = yaml.encode("text")
        assert(r == nil and e:kind() == errors.INVALID and e:retryable() == false, tostring(e))
        r, e = yaml.decode("")
        assert(r == nil and e:kind() == errors.INVALID, tostring(e))
        r, e = yaml.decode(42)
        assert(r == nil and e:kind() == errors.INVALID, tostring(e))
        r, e = yaml.decode("a: [1, 2")
        assert(r == nil and e:kind() == errors.INTERNAL and e:message():find("line 1", 1, true), tostring(e))
        return true
    "#);
    assert_eq!(v, Value::Bool(true));
}

#[test]
fn fs_module_reads_and_writes_inside_its_volume_only() {
    let base = std::env::temp_dir().join(format!("wippy-fs-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&base);
    let (root, outside) = (base.join("vol"), base.join("outside"));
    std::fs::create_dir_all(&root).unwrap();
    std::fs::create_dir_all(&outside).unwrap();
    std::fs::write(outside.join("secret.txt"), "secret").unwrap();
    std::os::unix::fs::symlink(&outside, root.join("escape")).unwrap();
    std::os::unix::fs::symlink(outside.join("nothing-yet"), root.join("dangling")).unwrap();
    let h = Harness::new(1);
    h.lua.set_volumes([("app:data".to_string(), root.clone())]);
    let v = h.ok(r#"
        local fs = require("fs")
        local vol, err = fs.get("app:data")
        assert(vol and err == nil, tostring(err))
        -- whole files: overwrite, append, exclusive
        assert(vol:writefile("/notes.txt", "one\ntwo") == true)
        assert(vol:writefile("/notes.txt", "\nthree", "a") == true)
        assert(vol:readfile("/notes.txt") == "one\ntwo\nthree")
        local ok, e = vol:writefile("/notes.txt", "x", "wx")
        assert(ok == nil and e:kind() == errors.ALREADY_EXISTS and e:message() == "open /notes.txt: file exists", tostring(e))
        ok, e = vol:writefile("/notes.txt", "x", "q")
        assert(ok == nil and e:kind() == errors.INVALID)
        local r, re = vol:readfile("/missing.txt")
        assert(r == nil and re:kind() == errors.NOT_FOUND and re:retryable() == nil, tostring(re))
        r, re = vol:readfile("")
        assert(r == nil and re:kind() == errors.INVALID)
        -- paths: relative to the working directory, never above the root
        assert(vol:mkdir("/sub") and vol:isdir("/sub") and not vol:exists("/nope"))
        local m, me = vol:mkdir("/a/b")
        assert(m == nil and me:kind() == errors.NOT_FOUND, "mkdir makes no parents")
        assert(vol:chdir("sub") and vol:pwd() == "/sub")
        assert(vol:writefile("here.txt", "in sub") and vol:readfile("/sub/here.txt") == "in sub")
        assert(vol:readfile("../../../notes.txt") == "one\ntwo\nthree", "'..' stops at the root")
        r, re = vol:readfile("/escape/secret.txt")
        assert(r == nil and re:kind() == errors.PERMISSION_DENIED, "a symlink out of the volume: " .. tostring(re))
        r, re = vol:writefile("/dangling", "x")
        assert(r == nil and re:kind() == errors.PERMISSION_DENIED, "a dangling symlink: " .. tostring(re))
        -- stat and readdir
        local st = vol:stat("/notes.txt")
        assert(st.name == "notes.txt" and st.size == 13 and st.type == fs.type.FILE and st.is_dir == false and st.modified > 0)
        local names = {}
        for entry in vol:readdir("/sub") do names[#names + 1] = entry.name .. ":" .. entry.type end
        assert(#names == 1 and names[1] == "here.txt:file", table.concat(names, ","))
        -- handles: read to EOF (NotFound), seek, scanner, write, copy from a handle
        local f = vol:open("/notes.txt", "r")
        assert(f:read(3) == "one" and f:seek(fs.seek.SET, 0) == 0)
        local sc, lines = f:scanner("lines"), {}
        while sc:scan() do lines[#lines + 1] = sc:text() end
        assert(sc:err() == nil and table.concat(lines, "|") == "one|two|three", table.concat(lines, "|"))
        local c, ce = f:read()
        assert(c == nil and ce:kind() == errors.NOT_FOUND)
        assert(f:close() == true and f:close() == true)
        c, ce = f:read()
        assert(c == nil and ce:kind() == errors.INTERNAL)
        local w = vol:open("/out.txt", "w")
        assert(w:write("abc") == 3 and w:sync() and w:close())
        local src = vol:open("/out.txt", "r")
        assert(vol:writefile("/copy.txt", src) == true)
        src:close()
        assert(vol:readfile("/copy.txt") == "abc")
        assert(vol:remove("/sub/here.txt") and vol:remove("/sub") and not vol:exists("/sub"))
        local g, ge = fs.get("app:other")
        assert(g == nil and ge:kind() == errors.NOT_FOUND)
        return true
    "#);
    assert_eq!(v, Value::Bool(true));
    assert_eq!(std::fs::read_to_string(outside.join("secret.txt")).unwrap(), "secret");
    assert!(!outside.join("nothing-yet").exists(), "nothing was written outside the volume");
    let _ = std::fs::remove_dir_all(&base);
}

#[test]
fn store_module_keeps_values_with_versions_ttls_and_conditions() {
    let h = Harness::new(1);
    h.lua.set_stores([("app:cache".to_string(), 0), ("app:tiny".to_string(), 2)]);
    let v = h.ok(r#"
        local store, time = require("store"), require("time")
        local cache, err = store.get("app:cache")
        assert(cache and err == nil, tostring(err))
        -- values are copies: a table read back is a new table
        local user = { name = "Alice", roles = { "admin" } }
        assert(cache:set("user:1", user) == true)
        user.name = "changed"
        local got = cache:get("user:1")
        assert(got.name == "Alice" and got.roles[1] == "admin" and got ~= user)
        local none, ne = cache:get("user:9")
        assert(none == nil and ne:kind() == errors.NOT_FOUND)
        assert(cache:has("user:1") and not cache:has("user:9"))
        -- versions and conditional writes
        local e1 = cache:entry("user:1")
        assert(e1.key == "user:1" and e1.value.name == "Alice" and type(e1.version) == "string")
        local lock, le = cache:put("lock:job", "me", { only_if_absent = true })
        assert(lock and lock.value == "me" and le == nil)
        lock, le = cache:put("lock:job", "you", { only_if_absent = true })
        assert(lock == nil and le:kind() == errors.ALREADY_EXISTS and le:retryable() == false)
        local cur = cache:entry("lock:job")
        local e2 = cache:put("lock:job", "next", { if_version = cur.version })
        assert(e2 and e2.version ~= cur.version and cache:get("lock:job") == "next")
        local stale, se = cache:put("lock:job", "late", { if_version = cur.version })
        assert(stale == nil and se:kind() == errors.CONFLICT and se:retryable() == true)
        local both, be = cache:put("x", 1, { only_if_absent = true, if_version = "1" })
        assert(both == nil and be:kind() == errors.INVALID)
        -- TTLs: gone to every reader once past
        assert(cache:set("session", "s", 0.001))
        time.sleep("20ms")
        assert(not cache:has("session") and cache:get("session") == nil)
        -- list: key order, prefix, pages
        for i = 1, 5 do cache:set("page:" .. i, i) end
        local p1 = cache:list({ prefix = "page:", limit = 2 })
        assert(#p1.items == 2 and p1.items[1].key == "page:1" and p1.has_more and p1.cursor == "page:2")
        local p2 = cache:list({ prefix = "page:", after = p1.cursor, limit = 10 })
        assert(#p2.items == 3 and p2.items[3].value == 5 and not p2.has_more)
        -- delete says whether there was a key
        assert(cache:delete("page:1") == true and cache:delete("page:1") == false)
        local info = cache:info()
        assert(info.backend == store.backend.MEMORY and info.consistency == store.consistency.LOCAL and info.conditional_put and info.durable == false)
        -- a full store refuses new keys, not new values for old ones
        local tiny = store.get("app:tiny")
        assert(tiny:set("a", 1) and tiny:set("b", 2) and tiny:set("a", 3))
        local full, fe = tiny:set("c", 4)
        assert(full == nil and fe:kind() == errors.LIMIT_EXCEEDED, tostring(fe))
        assert(cache:release() == true)
        local r, re = cache:get("user:1")
        assert(r == nil and re:kind() == errors.INVALID)
        local g, ge = store.get("app:nope")
        assert(g == nil and ge:kind() == errors.NOT_FOUND)
        return true
    "#);
    assert_eq!(v, Value::Bool(true));
    // another process sees what the first one wrote
    let v = h.ok(r#"return require("store").get("app:cache"):get("lock:job")"#);
    assert_eq!(v, Value::str("next"));
}

#[test]
fn text_regexp_has_gos_methods() {
    let h = Harness::new(1);
    let v = h.ok(r#"
        local text = require("text")
        local re, err = text.regexp.compile("(?P<key>[a-z]+)=(\\d+)")
        assert(re and err == nil, tostring(err))
        assert(re:match_string("x a=1") and not re:match_string("none"))
        assert(re:find_string("a=1 b=22") == "a=1" and re:find_string("none") == nil)
        local all = re:find_all_string("a=1 b=22 c=333")
        assert(#all == 3 and all[3] == "c=333")
        assert(#re:find_all_string("a=1 b=22 c=333", 2) == 2)
        local sub = re:find_string_submatch("b=22")
        assert(sub[1] == "b=22" and sub[2] == "b" and sub[3] == "22")
        local subs = re:find_all_string_submatch("a=1 b=2")
        assert(#subs == 2 and subs[2][3] == "2")
        local pos = re:find_string_index("xx a=1")
        assert(pos[1] == 4 and pos[2] == 6, pos[1] .. "," .. pos[2])
        assert(re:find_all_string_index("none") == nil and #re:find_all_string_index("a=1 b=2") == 2)
        assert(re:replace_all_string("a=1 b=2", "${key}:$2") == "a:1 b:2")
        assert(re:num_subexp() == 2)
        local names = re:subexp_names()
        assert(#names == 3 and names[1] == "" and names[2] == "key" and names[3] == "")
        assert(re:string() == "(?P<key>[a-z]+)=(\\d+)")
        local comma = text.regexp.compile("\\s*,\\s*")
        local parts = comma:split("a , b,c", -1)
        assert(#parts == 3 and parts[2] == "b")
        assert(#comma:split("a,b,c", 2) == 2 and comma:split("a,b,c", 2)[2] == "b,c")
        local bad, be = text.regexp.compile("(")
        assert(bad == nil and be:kind() == errors.INVALID and be:retryable() == false, tostring(be))
        return true
    "#);
    assert_eq!(v, Value::Bool(true));
}

#[test]
fn sql_module_runs_sqlite_with_transactions_and_statements() {
    let h = Harness::new(1);
    h.lua.set_databases([("app:db".to_string(), ":memory:".to_string())]);
    let v = h.ok(r#"
        local sql = require("sql")
        local db, err = sql.get("app:db")
        assert(db and err == nil, tostring(err))
        assert(db:type() == sql.type.SQLITE)
        assert(db:execute("CREATE TABLE users (id INTEGER PRIMARY KEY, name TEXT NOT NULL, score REAL, note TEXT, data BLOB)"))
        local r = db:execute("INSERT INTO users (name, score, note, data) VALUES (?, ?, ?, ?)", { "alice", 9.5, sql.NULL, sql.as.binary("\0\1") })
        assert(r.last_insert_id == 1 and r.rows_affected == 1)
        local rows = db:query("SELECT * FROM users WHERE name = ?", { "alice" })
        assert(#rows == 1 and rows[1].name == "alice" and rows[1].score == 9.5 and rows[1].note == nil and rows[1].data == "\0\1")
        assert(math.type(rows[1].id) == "integer")
        -- a transaction holds the connection; a savepoint undoes part of it
        local tx = db:begin({ isolation = sql.isolation.SERIALIZABLE })
        assert(tx:execute("INSERT INTO users (name) VALUES (?)", { "bob" }))
        local busy, be = db:query("SELECT 1")
        assert(busy == nil and be:kind() == errors.UNAVAILABLE and be:retryable() == true, tostring(be))
        assert(tx:savepoint("sp1") and tx:execute("INSERT INTO users (name) VALUES ('carol')") and tx:rollback_to("sp1"))
        local bad, bse = tx:savepoint("no; DROP TABLE users")
        assert(bad == nil and bse:kind() == errors.INVALID)
        assert(tx:commit() == true)
        local again, ae = tx:commit()
        assert(again == nil and ae:kind() == errors.INVALID and ae:message() == "transaction is not active")
        local names = {}
        for _, u in ipairs(db:query("SELECT name FROM users ORDER BY id")) do names[#names + 1] = u.name end
        assert(table.concat(names, ",") == "alice,bob", table.concat(names, ","))
        local tx2 = db:begin()
        tx2:execute("DELETE FROM users")
        assert(tx2:rollback() and #db:query("SELECT * FROM users") == 2)
        -- errors by kind
        local q, qe = db:query("SELEC nonsense")
        assert(q == nil and qe:kind() == errors.INVALID, tostring(qe))
        local c, ce = db:execute("INSERT INTO users (name) VALUES (NULL)")
        assert(c == nil and ce:kind() == errors.CONFLICT, tostring(ce))
        -- prepared statements run until closed
        local st = db:prepare("SELECT count(*) AS n FROM users WHERE name = ?")
        assert(st:query({ "bob" })[1].n == 1 and st:close())
        local s2, se = st:query({ "bob" })
        assert(s2 == nil and se:kind() == errors.INVALID)
        assert(db:release() and select(2, db:query("SELECT 1")):kind() == errors.INVALID)
        local g, ge = sql.get("app:nope")
        assert(g == nil and ge:kind() == errors.NOT_FOUND)
        return true
    "#);
    assert_eq!(v, Value::Bool(true));
    // another process, the same database (one connection, as Wippy's SQLite)
    let v = h.ok(r#"return require("sql").get("app:db"):query("SELECT count(*) AS n FROM users")[1].n"#);
    assert_eq!(v, Value::Int(2));
    // a transaction left open by a process that exited is rolled back by the next caller
    let v = h.ok(r#"local tx = require("sql").get("app:db"):begin(); tx:execute("DELETE FROM users"); return true"#);
    assert_eq!(v, Value::Bool(true));
    let v = h.ok(r#"return require("sql").get("app:db"):query("SELECT count(*) AS n FROM users")[1].n"#);
    assert_eq!(v, Value::Int(2));
}

#[test]
fn sql_builder_writes_statements_as_wippys_does() {
    let h = Harness::new(1);
    h.lua.set_databases([("app:shop".to_string(), ":memory:".to_string())]);
    let v = h.ok(r#"
        local sql = require("sql")
        local b = sql.builder
        -- compiled on the VM's first use, and shared read-only like every library table
        assert(not pcall(function() b.select = nil end) and type(b.select) == "function")
        local function check(q, want_sql, want_args)
          local text, args = q:to_sql()
          assert(text == want_sql, "got: " .. tostring(text))
          assert(#args == #want_args, "args: " .. #args)
          for i, a in ipairs(want_args) do assert(args[i] == a, "arg " .. i .. ": " .. tostring(args[i])) end
        end
        check(b.select("id", "name"):from("users"):where({ active = 1, role = "admin" }):order_by("name ASC"):limit(10):offset(20),
          "SELECT id, name FROM users WHERE active = ? AND role = ? ORDER BY name ASC LIMIT 10 OFFSET 20", { 1, "admin" })
        check(b.select("u.id", "COUNT(o.id) as n"):from("users u"):left_join("orders o ON o.user_id = u.id")
            :where(b.and_({ b.eq({ ["u.active"] = 1 }), b.gte({ ["u.score"] = 80 }) }))
            :group_by("u.id"):having(b.gt({ ["COUNT(o.id)"] = 0 })),
          "SELECT u.id, COUNT(o.id) as n FROM users u LEFT JOIN orders o ON o.user_id = u.id WHERE (u.active = ? AND u.score >= ?) GROUP BY u.id HAVING COUNT(o.id) > ?", { 1, 80, 0 })
        check(b.select("*"):from("t"):where(b.or_({ b.eq({ s = "a" }), b.eq({ s = { "b", "c" } }) })):where("x > ?", 5),
          "SELECT * FROM t WHERE (s = ? OR s IN (?,?)) AND x > ?", { "a", "b", "c", 5 })
        check(b.select("*"):from("t"):where(b.eq({ gone = sql.NULL })):where(b.not_eq({ k = 1 })):where(b.like({ n = "jo%" })),
          "SELECT * FROM t WHERE gone IS NULL AND k <> ? AND n LIKE ?", { 1, "jo%" })
        check(b.select("*"):from("t"):where("a = ? AND b = ?", 1, 2):placeholder_format(b.dollar),
          "SELECT * FROM t WHERE a = $1 AND b = $2", { 1, 2 })
        check(b.insert("users"):columns("name", "email"):values("alice", "a@x"):values("bob", "b@x"),
          "INSERT INTO users (name,email) VALUES (?,?),(?,?)", { "alice", "a@x", "bob", "b@x" })
        check(b.insert("users"):set_map({ name = "carol", email = "c@x" }), "INSERT INTO users (email,name) VALUES (?,?)", { "c@x", "carol" })
        check(b.update("users"):set("status", "active"):set("seen", b.expr("CURRENT_TIMESTAMP")):where({ id = 7 }),
          "UPDATE users SET status = ?, seen = CURRENT_TIMESTAMP WHERE id = ?", { "active", 7 })
        check(b.delete("users"):where({ active = 0 }):limit(100), "DELETE FROM users WHERE active = ? LIMIT 100", { 0 })
        local bad, be = b.select():from("users"):to_sql()
        assert(bad == nil and be:kind() == errors.INVALID, tostring(be))
        -- run_with on a database and on a transaction
        local db = sql.get("app:shop")
        assert(db:execute("CREATE TABLE users (id INTEGER PRIMARY KEY, name TEXT, email TEXT, status TEXT)"))
        local r = b.insert("users"):columns("name", "email"):values("alice", sql.NULL):run_with(db):exec()
        assert(r.last_insert_id == 1)
        local tx = db:begin()
        assert(b.update("users"):set("status", "vip"):where({ id = 1 }):run_with(tx):exec().rows_affected == 1)
        assert(tx:commit())
        local rows = b.select("name", "status", "email"):from("users"):where({ status = "vip" }):run_with(db):query()
        assert(#rows == 1 and rows[1].name == "alice" and rows[1].email == nil)
        return true
    "#);
    assert_eq!(v, Value::Bool(true));
}

#[test]
fn ctx_get_of_a_missing_key_is_not_found() {
    let h = Harness::new(1);
    h.entry(
        "test:ctxread",
        r#"return { main = function()
            local v, err = ctx.get("missing")
            assert(v == nil and err:kind() == errors.NOT_FOUND and err:message() == "key not found: missing", tostring(err))
            local e, ee = ctx.get("")
            assert(e == nil and ee:kind() == errors.INVALID)
            local t, terr = ctx.get("tenant")
            assert(t == "acme" and terr == nil)
            assert(next(ctx.all()) ~= nil)
            return true
        end }"#,
    );
    let v = h.ok(r#"
        local r, err = process.with_context({tenant = "acme"}):exec("test:ctxread", "app:processes")
        assert(r, tostring(err))
        -- a process spawned without a context: all() is an empty table
        return r
    "#);
    assert_eq!(v, Value::Bool(true));
}

#[test]
fn time_zones_layouts_and_durations_as_spec_12_3() {
    let h = Harness::new(1);
    let v = h.ok(r#"
        local ny, err = time.load_location("America/New_York")
        assert(ny and err == nil, tostring(err))
        assert(tostring(ny) == "America/New_York" and ny:string() == "America/New_York")
        local winter = time.date(2024, 1, 15, 12, 0, 0, 0, ny)
        local summer = time.date(2024, 7, 15, 12, 0, 0, 0, ny)
        assert(winter:unix() == 1705338000, winter:unix()) -- 17:00 UTC
        assert(summer:unix() == 1721059200, summer:unix()) -- 16:00 UTC
        assert(winter:format(time.RFC1123) == "Mon, 15 Jan 2024 12:00:00 EST", winter:format(time.RFC1123))
        assert(summer:format(time.RFC1123Z) == "Mon, 15 Jul 2024 12:00:00 -0400")
        assert(time.unix(1705338000):in_location(ny):hour() == 12)
        local tokyo = time.load_location("Asia/Tokyo")
        assert(time.unix(0):in_location(tokyo):hour() == 9)
        -- a wall time in a zone, parsed
        local p = time.parse("2006-01-02 15:04", "2024-07-04 12:00", ny)
        assert(p:unix() == 1720108800 and p:location():string() == "America/New_York")
        -- no zone in the value: the node's local zone
        local l = time.parse(time.DATE_TIME, "2024-01-02 03:04:05")
        assert(l:equal(time.date(2024, 1, 2, 3, 4, 5, 0, time.localtz)))
        local z = time.parse(time.RFC3339, "2024-01-02T03:04:05Z")
        assert(z:unix() == 1704164645)
        -- Go's parse: "Z" is UTC, another offset a zone of that offset
        assert(tostring(z) == "2024-01-02 03:04:05 +0000 UTC", tostring(z))
        local o3 = time.parse(time.RFC3339, "2024-01-02T03:04:05+03:00")
        assert(tostring(o3) == "2024-01-02 03:04:05 +0300 +0300" and o3:unix() == 1704153845, tostring(o3))
        -- what the layout leaves out is zero: a time of day alone is on 0000-01-01
        local tod = time.parse(time.TIME_ONLY, "14:30:00", time.utc)
        assert(tod:year() == 0 and tod:hour() == 14 and tod:minute() == 30, tostring(tod))
        assert(tod:format(time.TIME_ONLY) == "14:30:00" and tod:format_rfc3339() == "0000-01-01T14:30:00Z")
        -- the zero Time is Go's (year 1), not the unix epoch
        assert(time.date(1, 1, 1, 0, 0, 0, 0, time.utc):is_zero() and not time.unix(0, 0):is_zero())
        -- round and truncate count multiples from the zero Time, as Go does
        assert(time.unix(100, 0):truncate(time.parse_duration("7s")):unix() == 94)
        -- errors
        local e1, x1 = time.load_location("")
        assert(e1 == nil and x1:kind() == errors.INVALID and x1:message() == "empty location name")
        local e2, x2 = time.load_location("Nowhere/City")
        assert(e2 == nil and x2:kind() == errors.NOT_FOUND)
        assert(not pcall(time.load_location, 5))
        assert(time.load_location("UTC"):string() == "UTC" and time.load_location("Local"):string() == "Local")
        -- durations: number, string or Duration
        assert(time.parse_duration(time.SECOND):seconds() == 1 and time.parse_duration("1m30s"):seconds() == 90)
        assert(time.parse_duration(2.9):nanoseconds() == 2)
        local d = time.parse_duration("5ms")
        assert(time.parse_duration(d) == d)
        local b1, be1 = time.parse_duration({})
        assert(b1 == nil and be1:kind() == errors.INVALID)
        local b2, be2 = time.parse_duration("soon")
        assert(b2 == nil and be2:kind() == errors.INVALID and be2:message():find("^time.parse_duration"), be2:message())
        -- layout constants
        assert(time.RFC822 == "02 Jan 06 15:04 MST" and time.RFC822Z == "02 Jan 06 15:04 -0700")
        assert(time.RFC850 == "Monday, 02-Jan-06 15:04:05 MST" and time.RFC1123 == "Mon, 02 Jan 2006 15:04:05 MST")
        assert(time.STAMP == "Jan _2 15:04:05" and time.STAMP_NANO == "Jan _2 15:04:05.000000000")
        assert(time.STAMP_MILLI == "Jan _2 15:04:05.000" and time.STAMP_MICRO == "Jan _2 15:04:05.000000")
        assert(time.unix(1704164645):utc():format(time.STAMP) == "Jan  2 03:04:05")
        assert(time.ANSIC == nil and time.UnixDate == nil)
        -- in_local, ticker response
        assert(winter:in_local():location():string() == "Local" and winter:in_local():equal(winter))
        local tk = time.ticker("1ms")
        assert(tk:response() == tk:channel() and tk:response() == tk:response())
        assert(getmetatable(tk:response():receive()) ~= nil)
        tk:stop()
        return true
    "#);
    assert_eq!(v, Value::Bool(true));
}

#[test]
fn payload_formats_as_spec_12_8() {
    let h = Harness::new(1);
    let v = h.ok(r#"
        local F = payload.format
        assert(F.JSON == "json/plain" and F.YAML == "yaml/plain" and F.STRING == "text/plain" and F.BYTES == "application/octet-stream")
        assert(F.MSGPACK == "application/msgpack" and F.LUA == "lua/any" and F.GOLANG == "golang/any" and F.ERROR == "golang/error")
        local p = payload.new({ name = "x", list = { 1, 2, 3 } })
        assert(p:get_format() == F.LUA and tostring(p) == "payload{format=lua/any}")
        assert(payload.new(errors.new("e")):get_format() == F.ERROR and payload.new(nil):data() == nil)
        -- to JSON and back
        local j = p:transcode(F.JSON)
        assert(j:get_format() == F.JSON)
        local back = j:data()
        assert(back.name == "x" and #back.list == 3 and j:unmarshal().list[3] == 3)
        -- YAML and MessagePack round trips, and between them
        local y = p:transcode(F.YAML)
        assert(y:get_format() == F.YAML and y:data().name == "x", tostring(y:data()))
        local m = y:transcode(F.MSGPACK)
        assert(m:get_format() == F.MSGPACK and m:data().list[2] == 2)
        assert(m:transcode(F.LUA):get_format() == F.LUA and m:transcode(F.LUA):data().name == "x")
        -- strings only for STRING and BYTES
        local s = payload.new("hello"):transcode(F.STRING)
        assert(s:get_format() == F.STRING and s:data() == "hello")
        local bad, berr = p:transcode(F.STRING)
        assert(bad == nil and berr:kind() == errors.INTERNAL)
        local u, uerr = p:transcode("no/such")
        assert(u == nil and uerr:kind() == errors.INTERNAL)
        -- a payload sent in a message carries its value, not its encoding (Wippy: the
        -- receiver's data() decodes), also after two transcodes and inside a table
        local inbox = process.inbox()
        process.send(process.pid(), "p", j, m, { inner = y }, payload.new(nil):transcode(F.JSON))
        local msg = inbox:receive()
        local ps = msg:payload()
        assert(ps[1]:data().name == "x" and ps[1]:data().list[3] == 3, tostring(ps[1]:data()))
        assert(ps[2]:data().list[2] == 2 and ps[3]:data().inner.name == "x" and ps[4]:data() == nil)
        return true
    "#);
    assert_eq!(v, Value::Bool(true));
}

#[test]
fn events_bus_as_spec_12_7() {
    let h = Harness::new(2);
    h.entry(
        "test:listener",
        r#"return { main = function(pattern, kind)
            local sub, err = events.subscribe(pattern, kind)
            assert(sub and err == nil, tostring(err))
            assert(sub:channel() == sub:channel())
            process.send("driver", "ready", true)
            local got = {}
            while true do
                local r = channel.select { sub:channel():case_receive(), process.inbox():case_receive() }
                if r.channel ~= sub:channel() then break end
                local ev = r.value
                got[#got + 1] = ev.system .. "/" .. ev.kind .. "/" .. ev.path .. "/" .. tostring(ev.data and ev.data.n)
            end
            assert(sub:close() == true and sub:close() == true)
            return table.concat(got, ",")
        end }"#,
    );
    let v = h.ok(r#"
        process.registry.register("driver")
        local ready = process.listen("ready")
        local all = process.spawn_monitored("test:listener", "app:processes", "app.*")
        local created = process.spawn_monitored("test:listener", "app:processes", "app.users", "created")
        ready:receive(); ready:receive()
        assert(events.send("app.users", "created", "/u/1", { n = 1 }) == true)
        assert(events.send("app.users", "deleted", "/u/1") == true)
        assert(events.send("app.orders", "created", "/o/9", { n = 9 }) == true)
        assert(events.send("other", "created", "/x", { n = 0 }) == true)
        local _, e1 = events.send("", "k", "/p")
        assert(e1:kind() == errors.INVALID and e1:message() == "system is required")
        local _, e2 = events.send("s", "", "/p")
        assert(e2:message() == "kind is required")
        local _, e3 = events.send("s", "k", "")
        assert(e3:message() == "path is required")
        local s, se = events.subscribe("")
        assert(s == nil and se:kind() == errors.INVALID and se:message() == "system pattern is required")
        process.send(all, "stop", true)
        process.send(created, "stop", true)
        local results = {}
        local evs = process.events()
        for _ = 1, 2 do
            local e = evs:receive()
            results[e.from] = e.result.value
        end
        assert(results[all] == "app.users/created//u/1/1,app.users/deleted//u/1/nil,app.orders/created//o/9/9", results[all])
        assert(results[created] == "app.users/created//u/1/1", results[created])
        return true
    "#);
    assert_eq!(v, Value::Bool(true));
    // the subscriptions ended with their processes (closed, or dropped at the next publish)
    assert_eq!(h.node.events().len(), 0);
}

#[test]
fn registry_find_criteria_snapshots_and_deltas_as_spec_12_6() {
    let h = Harness::new(1);
    let item = |id: &str, kind: &str, meta: &[(&str, Value)]| {
        let mut m = Table::new();
        for (k, v) in meta {
            m.set(Value::str(k), v.clone());
        }
        RegistryItem { id: id.into(), kind: kind.into(), meta: Value::table(m), data: Value::table(Table::new()) }
    };
    let mut tags = Table::new();
    tags.array = vec![Value::str("red"), Value::str("blue")];
    h.lua.add_registry_item(item("app:users", "function.lua", &[("type", Value::str("handler")), ("tags", Value::table(tags))])).unwrap();
    h.lua.add_registry_item(item("app:orders", "process.lua", &[("type", Value::str("service")), ("title", Value::str("Order book"))])).unwrap();
    h.lua.add_registry_item(item("lib:util", "library.lua", &[])).unwrap();
    let v = h.ok(r#"
        local function ids(list) local o = {} for i, e in ipairs(list) do o[i] = e.id end table.sort(o) return table.concat(o, ",") end
        assert(ids(registry.find({ [".kind"] = "*.lua", [".ns"] = "app" })) == "app:orders,app:users")
        assert(ids(registry.find({ kind = "process.*" })) == "app:orders")
        assert(ids(registry.find({ [".name"] = "u*s" })) == "app:users")
        assert(ids(registry.find({ meta = { type = "handler" } })) == "app:users")
        assert(ids(registry.find({ ["meta.tags"] = { "blue", "red" } })) == "app:users")
        assert(ids(registry.find({ ["meta.tags"] = { "green" } })) == "")
        assert(ids(registry.find({ ["*meta.tags"] = "lu" })) == "app:users")
        assert(ids(registry.find({ ["^meta.title"] = "Order" })) == "app:orders")
        assert(ids(registry.find({ ["$meta.title"] = "book" })) == "app:orders")
        assert(ids(registry.find({ ["~meta.title"] = "^O.*k$" })) == "app:orders")
        assert(ids(registry.find({ type = "service" })) == "app:orders")
        local p = registry.parse_id("app:users")
        assert(p.ns == "app" and p.name == "users")
        local q = registry.parse_id("plain")
        assert(q.ns == "" and q.name == "plain")
        local snap = registry.snapshot()
        local all = snap:entries()
        assert(#all == 3 and ids(snap:namespace("app")) == "app:orders,app:users")
        assert(snap:version():id() == registry.current_version():id())
        local cs = snap:changes()
        assert(cs:create({ id = "app:new", kind = "registry.entry" }) == cs)
        assert(cs:delete({ ns = "lib", name = "util" }) == cs and cs:delete("app:orders") == cs)
        local ops = cs:ops()
        assert(#ops == 3 and ops[1].kind == "entry.create" and ops[2].kind == "entry.delete" and ops[2].entry.id == "lib:util")
        local bad, berr = cs:create("nope")
        assert(bad == nil and berr:kind() == errors.INVALID)
        local _, derr = cs:delete(5)
        assert(derr:kind() == errors.INVALID)
        local empty, eerr = registry.changes():apply()
        assert(empty == nil and eerr:kind() == errors.INVALID)
        local delta = registry.build_delta(
            { { id = "a:x", kind = "k", data = { v = 1 } }, { id = "a:y", kind = "k" } },
            { { id = "a:x", kind = "k", data = { v = 2 } }, { id = "a:z", kind = "k" } })
        local kinds = {}
        for _, d in ipairs(delta) do kinds[#kinds + 1] = d.kind .. ":" .. d.entry.id end
        assert(table.concat(kinds, ",") == "entry.update:a:x,entry.create:a:z,entry.delete:a:y", table.concat(kinds, ","))
        local nd, nderr = registry.build_delta("x", {})
        assert(nd == nil and nderr:kind() == errors.INVALID)
        local ok, aerr = registry.apply_version("x")
        assert(ok == false and aerr:kind() == errors.INVALID)
        return true
    "#);
    assert_eq!(v, Value::Bool(true));
}

#[test]
fn queue_consumer_runs_a_function_per_message_and_redelivers_a_failed_one() {
    let h = Harness::new(2);
    h.lua.set_queues([("app:q".to_string(), 0), ("app:idle".to_string(), 2)]);
    h.lua.set_stores([("app:attempts".to_string(), 0)]);
    let handler = LuaEntry::function(
        "app:handler",
        r#"
        local queue = require("queue")
        local store = require("store")
        return { handle = function(body)
            local msg = assert(queue.message())
            if body.fail then
                local s = assert(store.get("app:attempts"))
                if not s:get("n" .. body.n) then
                    s:set("n" .. body.n, true)
                    error("the first attempt fails")
                end
            end
            if body.early then
                assert(msg:ack() == true and msg:ack() == false and msg:nack() == false)
            end
            process.send(body.reply, "done", { n = body.n, id = msg:id(), trace = msg:header("trace"), all = msg:headers().trace, missing = msg:header("nope") })
            return false -- an ordinary value, even false, acks (Wippy's guide)
        end }"#,
    )
    .modules(ALL_MODULES)
    .method("handle");
    h.lua.add_entry(handler);
    let config = wippy_lua::ConsumerConfig { id: "app:consumer".into(), queue: "app:q".into(), func: "app:handler".into(), concurrency: 2, prefetch: 3 };
    h.node.register_entry("app:consumer", h.lua.queue_consumer(config));
    let (consumer, stopped) = h.node.spawn_watched(HOST, Spawn::entry("app:consumer")).expect("consumer");
    let v = h.ok(r#"
        local queue = require("queue")
        -- outside a consumer's handler, and bad arguments
        local m, e = queue.message()
        assert(m == nil and e:kind() == errors.INVALID, tostring(e))
        local _, e2 = queue.publish("", 1)
        assert(e2:kind() == errors.INVALID and e2:message() == "queue ID is empty", tostring(e2))
        local _, e3 = queue.publish("app:q", nil)
        assert(e3:kind() == errors.INVALID, tostring(e3))
        local _, e4 = queue.publish("app:none", 1)
        assert(e4:kind() == errors.NOT_FOUND and e4:retryable() == false, tostring(e4))
        -- a bounded queue with no consumer
        assert(queue.publish("app:idle", 1) == true and queue.publish("app:idle", { x = 2 }) == true)
        local _, full = queue.publish("app:idle", 3)
        assert(full:kind() == errors.INTERNAL and full:message():find("full"), tostring(full))
        local info = queue.info("app:idle")
        assert(info.message_count == 2 and info.consumer_count == 0 and info.ready == 2)
        assert(queue.info("app:q").consumer_count == 1)
        -- six messages through a consumer running two handlers at a time; the second fails
        -- once and is handled again
        local me = process.pid()
        for i = 1, 6 do
            assert(queue.publish("app:q", { n = i, reply = me, fail = (i == 2), early = (i == 4) }, { trace = "t" .. i }))
        end
        local inbox = process.listen("done")
        local seen, ids = {}, {}
        for _ = 1, 6 do
            local d = inbox:receive()
            assert(not seen[d.n], "handled twice: " .. d.n)
            seen[d.n] = true
            assert(d.trace == "t" .. d.n and d.all == d.trace and d.missing == nil, tostring(d.trace))
            assert(type(d.id) == "string" and #d.id == 36 and not ids[d.id])
            ids[d.id] = true
        end
        local extra = time.after("50ms")
        local r = channel.select({ inbox:case_receive(), extra:case_receive() })
        assert(r.channel == extra, "a message was handled again after it was acked")
        assert(queue.info("app:q").message_count == 0)
        return true
    "#);
    assert_eq!(v, Value::Bool(true));
    // a stopped consumer takes nothing more
    h.node.cancel(consumer, "stop").expect("cancel");
    assert!(stopped.wait_timeout(Duration::from_secs(10)).expect("the consumer did not stop").is_ok());
    let _ = h.ok(r#"
        local queue = require("queue")
        assert(queue.info("app:q").consumer_count == 0)
        assert(queue.publish("app:q", { n = 7, reply = process.pid() }))
        assert(queue.info("app:q").message_count == 1)
        return true
    "#);
}

#[test]
fn crypto_module_encrypts_signs_and_draws_randomness() {
    let h = Harness::new(1);
    let v = h.ok(r#"
        local crypto = require("crypto")
        -- built into the VM on first use, its nested tables read-only as every library's
        assert(not pcall(function() crypto.random.bytes = nil end) and type(crypto.random.bytes) == "function")
        -- random
        local b = assert(crypto.random.bytes(32))
        assert(#b == 32 and b ~= crypto.random.bytes(32))
        assert(select(2, crypto.random.bytes(0)):kind() == errors.INVALID)
        local s = assert(crypto.random.string(40, "ab"))
        assert(#s == 40 and not s:find("[^ab]"))
        assert(#crypto.random.string(16) == 16 and #crypto.random.uuid() == 36)
        -- HMAC (RFC 4231 case 2), hex
        assert(crypto.hmac.sha256("Jefe", "what do ya want for nothing?") == "5bdcc146bf60754e6a042426089575c75a003f089d2739839dec58b964ec3843")
        -- AEADs: every AES key size and ChaCha20-Poly1305, with and without additional data
        for _, k in ipairs({ string.rep("k", 16), string.rep("k", 24), string.rep("k", 32) }) do
            local c = assert(crypto.encrypt.aes("secret", k, "ctx"))
            assert(#c == 12 + 6 + 16 and crypto.decrypt.aes(c, k, "ctx") == "secret")
            local _, bad = crypto.decrypt.aes(c, k, "other")
            assert(bad:kind() == errors.INTERNAL and bad:message() == "decryption failed")
        end
        assert(select(2, crypto.encrypt.aes("x", "short")):kind() == errors.INVALID)
        local key = string.rep("z", 32)
        local c = assert(crypto.encrypt.chacha20("hello", key))
        assert(crypto.decrypt.chacha20(c, key) == "hello")
        local tampered = c:sub(1, -2) .. string.char((c:byte(-1) + 1) % 256)
        assert(select(2, crypto.decrypt.chacha20(tampered, key)):kind() == errors.INTERNAL)
        assert(select(2, crypto.encrypt.chacha20("x", "k")):kind() == errors.INVALID)
        -- JWT
        local exp = os.time() + 60
        local t = assert(crypto.jwt.encode({ sub = "u1", exp = exp, _header = { kid = "k1" } }, "s3cret"))
        local claims = assert(crypto.jwt.verify(t, "s3cret"))
        assert(claims.sub == "u1" and claims.exp == exp and claims._header == nil)
        assert(select(2, crypto.jwt.verify(t, "wrong")):kind() == errors.INTERNAL)
        assert(select(2, crypto.jwt.verify(t, "s3cret", "HS512")):kind() == errors.INTERNAL)
        local t512 = assert(crypto.jwt.encode({ n = 1 }, "s3cret", "HS512"))
        local _, missing = crypto.jwt.verify(t512, "s3cret", "HS512")
        assert(missing:message():find("exp"), missing:message())
        assert(crypto.jwt.verify(t512, "s3cret", "HS512", false).n == 1)
        local old = assert(crypto.jwt.encode({ exp = os.time() - 10 }, "s3cret"))
        local _, expired = crypto.jwt.verify(old, "s3cret")
        assert(expired:kind() == errors.INTERNAL and expired:message():find("expired"), expired:message())
        -- key derivation and comparison
        assert(#crypto.pbkdf2("pw", "salt", 1000, 32) == 32)
        assert(crypto.constant_time_compare("abc", "abc") and not crypto.constant_time_compare("abc", "abd") and not crypto.constant_time_compare("a", "ab"))
        return true
    "#);
    assert_eq!(v, Value::Bool(true));
}

#[test]
fn compress_module_round_trips_every_algorithm_and_bounds_decoding() {
    let h = Harness::new(1);
    let v = h.ok(r#"
        local compress = require("compress")
        local text = string.rep("the quick brown fox jumps over the lazy dog. ", 200)
        for _, algo in ipairs({ "gzip", "deflate", "zlib", "brotli", "zstd" }) do
            local c = assert(compress[algo].encode(text))
            assert(#c < #text / 4, algo)
            assert(compress[algo].decode(c) == text, algo)
            -- a bomb is stopped at max_size
            local _, big = compress[algo].decode(c, { max_size = 100 })
            assert(big and big:kind() == errors.INTERNAL, algo)
            local _, bad = compress[algo].decode("not compressed at all")
            assert(bad and bad:kind() == errors.INVALID, algo .. ": " .. tostring(bad))
        end
        assert(compress.gzip.encode(text, { level = 9 }) and compress.zstd.encode(text, { level = 19 }))
        assert(select(2, compress.gzip.encode(text, { level = 10 })):kind() == errors.INVALID)
        assert(select(2, compress.brotli.encode("")):kind() == errors.INVALID)
        -- gzip is the format other tools read: the header's magic bytes
        assert(compress.gzip.encode("x"):sub(1, 2) == "\31\139")
        -- zstd dictionaries
        local samples = {}
        for i = 1, 200 do samples[i] = '{"user":' .. i .. ',"name":"user' .. i .. '","active":true}' end
        local dict = assert(compress.zstd.train_dict(samples, { size = 4096 }))
        local info = assert(compress.zstd.inspect_dict(dict))
        assert(info.content_size == #dict and math.type(info.id) == "integer")
        local packed = assert(compress.zstd.encode(samples[7], { dict = dict }))
        assert(compress.zstd.decode(packed, { dict = dict }) == samples[7])
        return true
    "#);
    assert_eq!(v, Value::Bool(true));
}
