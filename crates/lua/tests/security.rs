//! Security seen from Lua: a process under a tenant's actor and scope cannot send, spawn,
//! escalate with with_actor, or name other processes beyond its policies (and a denied
//! send delivers nothing); the security module's actor/scope/new_actor/new_scope/policy/
//! named_scope/can; and a host's module allow-list.
mod common;

use std::sync::Arc;
use std::time::Duration;

use common::*;
use wippy_lua::{LuaEntry, ShardOptions};
use wippy_runtime::{Actor, ErrorKind, HostConfig, HostSecurity, Identity, Policy, PolicySpec, Scope, Spawn, Value};

fn policy(id: &str, actions: &[&str], resources: &[&str], effect: &str) -> Arc<Policy> {
    let spec = PolicySpec {
        id: id.into(),
        actions: actions.iter().map(|s| s.to_string()).collect(),
        resources: resources.iter().map(|s| s.to_string()).collect(),
        effect: effect.into(),
        conditions: vec![],
    };
    Arc::new(spec.compile().unwrap())
}

/// Run `body` (a main function body) as a process under `identity`.
fn run_as(h: &Harness, identity: Identity, body: &str) -> Value {
    let id = format!("test:as{}", body.len());
    h.lua.add_entry(LuaEntry::process(&id, &format!("return {{ main = function(...)\n{body}\nend }}")).modules(ALL_MODULES));
    let (_, watch) = h.node.spawn_watched(HOST, Spawn::entry(&id).identity(Arc::new(identity))).unwrap();
    match watch.wait_timeout(Duration::from_secs(20)).expect("finished") {
        Ok(v) => v,
        Err(e) => panic!("process failed: {}", e.message),
    }
}

fn tenant(h: &Harness) -> Identity {
    let own = policy("t:own", &["process.spawn", "process.exec", "process.host", "process.registry.register"], &["*"], "allow");
    let gateway = policy("t:gateway", &["process.send"], &["*"], "allow");
    let no_sys = policy("t:no-sys", &["process.send"], &["{app:processes|0x00001}"], "deny");
    h.node.security().add_policy(own.clone(), &["t:tenants".into()]);
    h.node.security().add_policy(gateway.clone(), &["t:tenants".into()]);
    h.node.security().add_policy(no_sys.clone(), &[]);
    let mut meta = wippy_runtime::Table::new();
    meta.set(Value::str("org"), Value::str("acme"));
    Identity::new(Some(Arc::new(Actor::new("tenant:acme").with_meta(meta))), Some(Arc::new(Scope::new(vec![own, gateway, no_sys]))))
}

#[test]
fn a_tenant_cannot_send_past_a_deny_and_nothing_is_delivered() {
    let h = Harness::new(2);
    // PID 1: a "system" process that counts what it receives.
    h.entry("test:sys", "return { main = function() local n = 0 local inbox = process.inbox() while true do local m = inbox:receive() if m:topic() == 'count' then process.send(m:from(), 'n', n) else n = n + 1 end end end }");
    let sys = h.node.spawn(HOST, Spawn::entry("test:sys")).unwrap();
    assert_eq!(sys.to_string(), "{app:processes|0x00001}");
    let id = tenant(&h);
    let v = run_as(&h, id, "local ok, err = process.send('{app:processes|0x00001}', 'hello', 1)
        return tostring(ok) .. '|' .. err:kind() .. '|' .. err:message()");
    assert_eq!(v.as_str().unwrap(), "nil|PermissionDenied|permission denied: process.send on {app:processes|0x00001}");
    let count = h.ok("local ch = process.listen('n') process.send('{app:processes|0x00001}', 'count') return ch:receive()");
    assert_eq!(count, Value::Int(0), "the denied message never arrived");
    h.node.terminate(sys).unwrap();
}

#[test]
fn with_actor_needs_process_security_and_foreign_names_need_their_permission() {
    let h = Harness::new(2);
    h.entry("test:child", "return { main = function() return security.actor() and security.actor():id() or 'none' end }");
    let id = tenant(&h);
    let v = run_as(&h, id.clone(), "
        assert(not pcall(security.new_actor, 'root'), 'making an actor needs security.actor.create')
        local root = security.actor()
        local pid, err = process.with_actor(root):spawn('test:child', 'app:processes')
        local out = tostring(pid) .. '|' .. tostring(err)
        local ok, err2 = process.registry.register('stolen', process.spawn('test:child', 'app:processes'))
        return out .. '|' .. tostring(ok) .. '|' .. err2:kind()");
    assert_eq!(v.as_str().unwrap(), "nil|permission denied: process.security on security|nil|PermissionDenied");
    assert_eq!(h.node.lookup("stolen"), None);
    // The child of a tenant runs as the tenant (inherited).
    let v = run_as(&h, id, "return process.exec('test:child', 'app:processes')");
    assert_eq!(v.as_str().unwrap(), "tenant:acme");
}

#[test]
fn the_security_module_reports_and_builds_identities() {
    let h = Harness::new(2);
    let id = tenant(&h);
    h.entry("test:child", "return { main = function() return security.actor():id() .. ' ' .. #security.scope():policies() end }");
    let v = run_as(&h, id, "
        local a = security.actor()
        local out = { a:id(), a:meta().org, #security.scope():policies() }
        out[#out + 1] = tostring(security.can('process.send', '{app:processes|0x00009}'))
        out[#out + 1] = tostring(security.can('process.send', '{app:processes|0x00001}'))
        out[#out + 1] = tostring(security.can('fs.write', 'x'))
        -- reading policies and making scopes need their permissions (SPEC 12.9)
        local p, perr = security.policy('t:gateway')
        out[#out + 1] = tostring(p) .. ':' .. perr:kind()
        out[#out + 1] = tostring(pcall(security.new_scope, {}))
        return table.concat(out, ',')");
    assert_eq!(v.as_str().unwrap(), "tenant:acme,acme,3,true,false,false,nil:Invalid,false");
    let v = h.ok("
        local p = assert(security.policy('t:gateway'))
        local out = { p:id() }
        local s = assert(security.named_scope('t:tenants'))
        out[#out + 1] = #s:policies()
        out[#out + 1] = #security.new_scope({ p }):policies()
        out[#out + 1] = #s:without('t:own'):policies()
        local _, err = security.policy('t:nope')
        out[#out + 1] = err:kind()
        local _, gerr = security.named_scope('t:none')
        out[#out + 1] = gerr:kind()
        return table.concat(out, ',')");
    assert_eq!(v.as_str().unwrap(), "t:gateway,2,1,1,Internal,Internal");
    // An unidentified process (not strict): everything is allowed, there is no actor.
    assert_eq!(h.ok("return tostring(security.actor()) .. ' ' .. tostring(security.can('anything', 'x'))").as_str().unwrap(), "nil true");
}

#[test]
fn a_host_module_allow_list_refuses_entries_that_need_more() {
    let h = Harness::new(1);
    let mut cfg = HostConfig::new("app:sandbox").workers(1).stop_timeout(Duration::from_millis(200));
    cfg.security = Arc::new(HostSecurity { modules: Some(vec!["time".into()]), ..HostSecurity::default() });
    h.lua.set_host_options("app:sandbox", ShardOptions::default());
    h.node.add_host(cfg).unwrap();
    h.lua.add_entry(LuaEntry::process("test:timer", "return { main = function() return 1 end }").modules(&["time"]));
    h.lua.add_entry(LuaEntry::process("test:json", "return { main = function() return 1 end }").modules(&["time", "json"]));
    assert_eq!(h.node.exec("app:sandbox", Spawn::entry("test:timer")).unwrap(), Value::Int(1));
    let e = h.node.spawn("app:sandbox", Spawn::entry("test:json")).unwrap_err();
    assert_eq!(e.kind, ErrorKind::PermissionDenied);
    assert_eq!(e.message, "permission denied: module on json (entry test:json on host app:sandbox, which allows only: time)");
}

#[test]
fn registry_writes_are_checked_as_registry_write_on_the_entry() {
    let h = Harness::new(1);
    let id = tenant(&h);
    let v = run_as(&h, id, "
        local cs = registry.changes()
        local ok, err = cs:update({ id = 'app:settings', kind = 'registry.entry', data = {} })
        local ok2, err2 = registry.apply_version(0)
        return tostring(ok) .. '|' .. err:message() .. '|' .. tostring(ok2) .. ':' .. err2:kind()");
    assert_eq!(v.as_str().unwrap(), "nil|permission denied: registry.write on app:settings|false:PermissionDenied");
}

#[test]
fn with_options_merges_and_checks_its_permissions() {
    let h = Harness::new(1);
    h.entry("test:child", "return { main = function() return 1 end }");
    // no actor: allowed; options merge, keys must be strings
    let v = h.ok(r#"
        local sp = process.with_options({ timeout = "5s" }):with_options({ tag = "x" })
        local r = sp:exec("test:child", "app:processes")
        assert(r == 1)
        local ok, err = pcall(process.with_options, { [1] = "v" })
        assert(not ok and err:find("options keys must be strings", 1, true), err)
        ok, err = pcall(process.with_options, "no")
        assert(not ok and err:find("table expected", 1, true))
        return true
    "#);
    assert_eq!(v, Value::Bool(true));
    // a tenant without process.context: the call raises
    let id = tenant(&h);
    let v = run_as(
        &h,
        id,
        r#"
        local ok, err = pcall(process.with_options, { tag = "x" })
        assert(not ok and err:find("not allowed to spawn processes with custom options", 1, true), tostring(err))
        return true
    "#,
    );
    assert_eq!(v, Value::Bool(true));
}

#[test]
fn funcs_executors_calls_and_processes_as_functions() {
    let h = Harness::new(2);
    h.lua.add_entry(
        LuaEntry::function("test:who", "return { call = function(x) return { x = x, tenant = ctx.get('tenant'), actor = security.actor() and security.actor():id() } end }")
            .modules(ALL_MODULES),
    );
    h.lua.add_entry(LuaEntry::process("test:proc", "return { main = function(a, b) if a == 'boom' then error('it broke') end return { sum = a + b } end }").default_host(HOST));
    h.lua.add_entry(LuaEntry::process("test:nohost", "return { main = function() return 1 end }"));
    let v = h.ok(r#"
        local ex = funcs.new()
        local ex2 = ex:with_context({ tenant = "acme", [1] = "dropped" })
        assert(ex2 ~= ex and ex.ctx == nil, "with_* returns a new executor")
        local r, err = ex2:call("test:who", 7)
        assert(r and r.x == 7 and r.tenant == "acme", tostring(err))
        local f = ex2:async("test:who", 8)
        assert(f:response():receive():data().tenant == "acme")
        local ex3 = ex2:with_actor(security.new_actor("svc:worker"))
        local r3 = ex3:call("test:who", 9)
        assert(r3.actor == "svc:worker" and r3.tenant == "acme")
        assert(not pcall(ex.with_actor, ex, nil))
        local ok, e = pcall(ex.with_scope, ex, "nope")
        assert(not ok and tostring(e):find("Scope expected"), tostring(e))
        assert(ex:with_options({ timeout = "1s" }):call("test:who", 1).x == 1)
        -- call errors (SPEC 12.4.2)
        local _, e1 = funcs.call("")
        assert(e1:kind() == errors.INVALID and e1:message() == "function ID required")
        local _, e2 = funcs.call("nons")
        assert(e2:message() == "namespace required in function ID")
        local _, e3 = funcs.call("test:")
        assert(e3:message() == "name required in function ID")
        -- a process entry with a default host is a function (SPEC 12.4.4)
        local s = funcs.call("test:proc", 2, 3)
        assert(s and s.sum == 5)
        local bad, berr = funcs.call("test:proc", "boom", 0)
        assert(bad == nil and tostring(berr):find("it broke"), tostring(berr))
        local nh, nherr = funcs.call("test:nohost")
        assert(nh == nil and nherr:kind() == errors.INVALID)
        return true
    "#);
    assert_eq!(v, Value::Bool(true));
    // a tenant without funcs.* permissions
    let id = tenant(&h);
    let v = run_as(
        &h,
        id,
        r#"
        local ex, err = funcs.new():with_context({ a = 1 })
        assert(ex == nil and err:kind() == errors.PERMISSION_DENIED, tostring(err))
        local ex2, err2 = funcs.new():with_actor(security.actor())
        assert(ex2 == nil and err2:kind() == errors.PERMISSION_DENIED)
        local r, cerr = funcs.call("test:who", 1)
        assert(r == nil and cerr:kind() == errors.PERMISSION_DENIED and cerr:message() == "not allowed: test:who", tostring(cerr))
        return true
    "#,
    );
    assert_eq!(v, Value::Bool(true));
}

#[test]
fn policies_and_scopes_evaluate_from_lua() {
    let h = Harness::new(1);
    let _ = tenant(&h); // registers t:own, t:gateway (group t:tenants) and t:no-sys
    let v = h.ok(r#"
        local a = security.new_actor("tenant:acme")
        local own = security.policy("t:own")
        local nosys = security.policy("t:no-sys")
        assert(own:id() == "t:own")
        assert(own:evaluate(a, "process.spawn", "app:x") == "allow")
        assert(own:evaluate(a, "process.send", "x") == "undefined")
        assert(nosys:evaluate(a, "process.send", "{app:processes|0x00001}") == "deny")
        local sc = security.new_scope({ own, security.policy("t:gateway"), nosys })
        assert(sc:evaluate(a, "process.send", "{app:processes|0x00002}") == "allow")
        assert(sc:evaluate(a, "process.send", "{app:processes|0x00001}") == "deny")
        assert(sc:evaluate(a, "registry.get", "x") == "undefined")
        assert(sc:contains("t:own") and sc:contains(own) and sc:contains({ ns = "t", name = "gateway" }))
        assert(not sc:contains("t:nope") and not sc:contains(5))
        local ps = sc:policies()
        assert(#ps == 3 and ps[1]:id() == "t:own")
        assert(not pcall(own.evaluate, own, "not an actor", "a", "b"))
        local g = security.named_scope("t:tenants")
        assert(g:contains("t:own") and g:contains("t:gateway") and not g:contains("t:no-sys"))
        return true
    "#);
    assert_eq!(v, Value::Bool(true));
}

#[test]
fn events_need_their_permissions_and_a_denial_is_invalid() {
    let h = Harness::new(1);
    let id = tenant(&h);
    let v = run_as(
        &h,
        id,
        r#"
        local s, err = events.subscribe("app.*")
        assert(s == nil and err:kind() == errors.INVALID and err:message() == "not allowed to subscribe to events from system: app.*", tostring(err))
        local ok, serr = events.send("app.users", "created", "/u/1")
        assert(ok == nil and serr:kind() == errors.INVALID)
        return true
    "#,
    );
    assert_eq!(v, Value::Bool(true));
}

#[test]
fn token_stores_create_validate_revoke_and_close() {
    let h = Harness::new(1);
    h.lua.add_token_store("app:tokens", None);
    // a store whose entry says `default_expiration`: a token created without an expiration
    // lives that long; `expiration = 0` still means forever
    h.lua.add_token_store("app:short", Some(std::time::Duration::from_millis(1)));
    let v = h.ok(r#"
        local short_store = security.token_store("app:short")
        local actor0, scope0 = security.new_actor("user:x"), security.new_scope({})
        local by_default = assert(short_store:create(actor0, scope0))
        local kept = assert(short_store:create(actor0, scope0, { expiration = 0 }))
        time.sleep("5ms")
        assert(select(3, short_store:validate(by_default)), "the store's default expiration applies")
        assert(short_store:validate(kept), "0 is forever")
        local store, err = security.token_store("app:tokens")
        assert(store and err == nil, tostring(err))
        local actor = security.new_actor("user:ada", { role = "admin" })
        local scope = security.new_scope({})
        local tok = assert(store:create(actor, scope, { expiration = "1h", meta = { device = "cli" } }))
        assert(type(tok) == "string" and #tok == 64)
        local a, s, verr = store:validate(tok)
        assert(a and a:id() == "user:ada" and a:meta().role == "admin" and s and verr == nil, tostring(verr))
        local forever = assert(store:create(actor, scope))
        assert(store:validate(forever))
        local short = assert(store:create(actor, scope, { expiration = 1 }))
        time.sleep("5ms")
        local x, y, expired = store:validate(short)
        assert(x == nil and y == nil and expired, "expired")
        local _, bad = store:create(actor, scope, { expiration = "soon" })
        assert(bad:kind() == errors.INVALID)
        assert(store:revoke(tok) == true)
        assert(select(3, store:validate(tok)))
        -- another process acquiring the store sees the same tokens
        assert(security.token_store("app:tokens"):validate(forever))
        assert(store:close() == true)
        local _, closed = store:create(actor, scope)
        assert(closed:kind() == errors.INTERNAL and closed:message() == "store closed")
        local n1, e1 = security.token_store("")
        assert(n1 == nil and e1:kind() == errors.INVALID)
        local n2, e2 = security.token_store("app:nope")
        assert(n2 == nil and e2:kind() == errors.INTERNAL)
        return true
    "#);
    assert_eq!(v, Value::Bool(true));
    let id = tenant(&h);
    let v = run_as(&h, id, r#"
        local s, err = security.token_store("app:tokens")
        assert(s == nil and err:kind() == errors.INVALID, tostring(err))
        return true
    "#);
    assert_eq!(v, Value::Bool(true));
}

#[test]
fn http_client_checks_the_url_private_addresses_and_unix_sockets() {
    // SPEC 11.5: http_client.request on the URL, http_client.private_ip for loopback and
    // private targets, http_client.unix_socket on the socket's path; each refused before
    // any connection is made
    let h = Harness::new(1);
    let web = policy("t:web", &["http_client.request"], &["https://api.example/*", "http://127.0.0.1:9/*"], "allow");
    h.node.security().add_policy(web.clone(), &[]);
    let id = Identity::new(Some(Arc::new(Actor::new("svc:web"))), Some(Arc::new(Scope::new(vec![web]))));
    h.lua.add_entry(
        LuaEntry::process(
            "test:client",
            r#"return { main = function()
                local out = {}
                for _, c in ipairs({
                    { "http://other.example/x" },
                    { "http://127.0.0.1:9/x" },
                    { "https://api.example/v1", { unix_socket = "/run/docker.sock" } },
                }) do
                    local r, err = http_client.get(c[1], c[2])
                    out[#out + 1] = tostring(r) .. "|" .. err:kind() .. "|" .. err:message()
                end
                return table.concat(out, "\n")
            end }"#,
        )
        .modules(&["http_client"]),
    );
    h.node.security().set_strict(true);
    let (_, watch) = h.node.spawn_watched(HOST, Spawn::entry("test:client").identity(Arc::new(id))).unwrap();
    let v = watch.wait_timeout(Duration::from_secs(20)).expect("finished").unwrap();
    assert_eq!(v.as_str().unwrap(), "nil|PermissionDenied|not allowed: http://other.example/x\nnil|PermissionDenied|not allowed: private IP 127.0.0.1\nnil|PermissionDenied|not allowed: unix socket /run/docker.sock");
}
