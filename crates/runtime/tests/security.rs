//! Security: the evaluator (patterns, every operator, value_from, nested meta paths, deny
//! over allow, strict mode), a proptest comparing it with a naive reference, and the
//! checks on native processes' operations — a denied operation does nothing.
mod common;

use std::sync::Arc;

use common::*;
use proptest::prelude::*;
use proptest::test_runner::RngSeed;
use wippy_runtime::*;

fn policy(actions: &[&str], resources: &[&str], effect: &str, conditions: Vec<ConditionSpec>) -> Arc<Policy> {
    let spec = PolicySpec {
        id: "t:p".into(),
        actions: actions.iter().map(|s| s.to_string()).collect(),
        resources: resources.iter().map(|s| s.to_string()).collect(),
        effect: effect.into(),
        conditions,
    };
    Arc::new(spec.compile().unwrap())
}

fn cond(field: &str, op: &str, value: Option<Value>, from: Option<&str>) -> ConditionSpec {
    ConditionSpec { field: field.into(), op: op.into(), value, value_from: from.map(str::to_string) }
}

fn actor(id: &str, meta: &[(&str, Value)]) -> Arc<Actor> {
    let mut t = Table::new();
    for (k, v) in meta {
        t.set(Value::str(k), v.clone());
    }
    Arc::new(Actor::new(id).with_meta(t))
}

fn identity(a: Arc<Actor>, policies: Vec<Arc<Policy>>) -> Identity {
    Identity::new(Some(a), Some(Arc::new(Scope::new(policies))))
}

fn ask(id: &Identity, action: &str, resource: &str) -> bool {
    evaluate(Some(id), false, &Request { action, resource, pid: None, meta: None, target: None })
}

fn list(items: &[Value]) -> Value {
    let mut t = Table::new();
    for i in items {
        t.push(i.clone());
    }
    Value::table(t)
}

#[test]
fn patterns_match_star_exact_lists_and_globs_anywhere() {
    assert!(Pattern::new("*").matches("anything"));
    assert!(Pattern::new("process.send").matches("process.send") && !Pattern::new("process.send").matches("process.sendx"));
    assert!(Pattern::new("process.*").matches("process.spawn.linked"));
    assert!(Pattern::new("*.read").matches("fs.file.read") && !Pattern::new("*.read").matches("fs.read.x"));
    assert!(Pattern::new("app.*:worker*").matches("app.jobs:worker-7"));
    assert!(!Pattern::new("app.*:worker*").matches("app.jobs:manager"));
    assert!(Pattern::new("a*b*c").matches("abc") && Pattern::new("a*b*c").matches("a-b-b-c") && !Pattern::new("a*b*c").matches("ac"));
    assert!(Pattern::list(&["x", "y.*"]).matches("y.z") && !Pattern::list(&["x", "y.*"]).matches("z"));
}

#[test]
fn deny_beats_allow_and_nothing_matching_denies() {
    let a = actor("user:1", &[]);
    let id = identity(a.clone(), vec![policy(&["*"], &["*"], "allow", vec![]), policy(&["process.send"], &["{sys|*"], "deny", vec![])]);
    assert!(ask(&id, "process.spawn", "app:x"));
    assert!(!ask(&id, "process.send", "{sys|0x00001}"));
    assert!(ask(&id, "process.send", "{app|0x00001}"));
    let none = identity(a, vec![policy(&["process.spawn"], &["app:*"], "allow", vec![])]);
    assert!(!ask(&none, "process.send", "{app|0x00001}"), "no applying policy: denied");
}

#[test]
fn without_actor_or_scope_everything_is_allowed_unless_strict() {
    let req = Request { action: "process.send", resource: "x", pid: None, meta: None, target: None };
    assert!(evaluate(None, false, &req));
    assert!(!evaluate(None, true, &req));
    let only_actor = Identity::new(Some(actor("a", &[])), None);
    assert!(evaluate(Some(&only_actor), false, &req));
    assert!(!evaluate(Some(&only_actor), true, &req));
}

#[test]
fn every_operator_with_values_value_from_and_nested_paths() {
    let mut org = Table::new();
    org.set(Value::str("tier"), Value::str("gold"));
    let a = actor("user:7", &[("level", Value::Int(5)), ("org", Value::table(org)), ("tags", list(&[Value::str("beta")])), ("team", Value::str("blue"))]);
    let mut meta = Table::new();
    meta.set(Value::str("team"), Value::str("blue"));
    meta.set(Value::str("size"), Value::Float(2.5));
    let check = |c: ConditionSpec| {
        let id = identity(a.clone(), vec![policy(&["*"], &["*"], "allow", vec![c])]);
        evaluate(Some(&id), false, &Request { action: "do", resource: "res:1", pid: None, meta: Some(&meta), target: None })
    };
    let v = |x: Value| Some(x);
    assert!(check(cond("actor.id", "eq", v(Value::str("user:7")), None)));
    assert!(check(cond("actor.id", "ne", v(Value::str("user:8")), None)));
    assert!(check(cond("actor.meta.level", "gt", v(Value::Int(4)), None)));
    assert!(check(cond("actor.meta.level", "gte", v(Value::Float(5.0)), None)));
    assert!(check(cond("actor.meta.level", "lt", v(Value::Int(6)), None)));
    assert!(!check(cond("actor.meta.level", "lte", v(Value::Int(4)), None)));
    assert!(check(cond("actor.meta.org.tier", "eq", v(Value::str("gold")), None)), "nested path");
    assert!(check(cond("actor.meta.org.tier", "in", v(list(&[Value::str("silver"), Value::str("gold")])), None)));
    assert!(check(cond("actor.meta.org.tier", "nin", v(list(&[Value::str("bronze")])), None)));
    assert!(check(cond("actor.meta.org", "exists", None, None)));
    assert!(check(cond("actor.meta.nope", "nexists", None, None)));
    assert!(check(cond("actor.meta.tags", "contains", v(Value::str("beta")), None)));
    assert!(check(cond("resource", "contains", v(Value::str("res:")), None)));
    assert!(check(cond("actor.meta.tags", "ncontains", v(Value::str("alpha")), None)));
    assert!(check(cond("actor.id", "matches", v(Value::str("^user:[0-9]+$")), None)));
    assert!(check(cond("actor.id", "nmatches", v(Value::str("^admin")), None)));
    assert!(check(cond("meta.team", "eq", None, Some("actor.meta.team"))), "value_from");
    assert!(!check(cond("meta.team", "ne", None, Some("actor.meta.team"))));
    assert!(check(cond("meta.size", "lt", v(Value::Int(3)), None)));
    assert!(check(cond("action", "eq", v(Value::str("do")), None)));
    assert!(!check(cond("meta.missing", "eq", v(Value::Nil), None)), "a missing field equals nothing");
}

#[test]
fn bad_policies_are_refused_with_the_field() {
    let bad = |spec: PolicySpec| spec.compile().unwrap_err();
    let base = PolicySpec { id: "p".into(), actions: vec!["*".into()], resources: vec!["*".into()], effect: "allow".into(), conditions: vec![] };
    assert_eq!(bad(PolicySpec { effect: String::new(), ..base.clone() }).field, "policy.effect");
    assert_eq!(bad(PolicySpec { effect: "maybe".into(), ..base.clone() }).field, "policy.effect");
    let e = bad(PolicySpec { conditions: vec![cond("actor.id", "like", Some(Value::str("x")), None)], ..base.clone() });
    assert_eq!(e.field, "policy.conditions[1].operator");
    assert!(e.message.contains("unknown operator \"like\""), "{e}");
    let e = bad(PolicySpec { conditions: vec![cond("actor.id", "matches", Some(Value::str("(")), None)], ..base.clone() });
    assert!(e.message.starts_with("bad regular expression"), "{e}");
    let e = bad(PolicySpec { conditions: vec![cond("who", "eq", Some(Value::str("x")), None)], ..base });
    assert_eq!(e.field, "policy.conditions[1].field");
}

// ---- the reference: the same rules, written the slow and obvious way ----

#[derive(Debug, Clone)]
struct RefPolicy {
    action: String,
    resource: String,
    deny: bool,
    cond: Option<(String, String, i64)>, // (field, op, value) on an integer actor.meta.n or string actor.id
}

fn glob(p: &str, s: &str) -> bool {
    match p.find('*') {
        None => p == s,
        Some(i) => {
            let (head, tail) = (&p[..i], &p[i + 1..]);
            s.starts_with(head) && (0..=s.len() - head.len()).any(|k| s.is_char_boundary(head.len() + k) && glob(tail, &s[head.len() + k..]))
        }
    }
}

fn reference(policies: &[RefPolicy], n: i64, action: &str, resource: &str) -> bool {
    let applies = |p: &RefPolicy| {
        glob(&p.action, action)
            && glob(&p.resource, resource)
            && p.cond.as_ref().is_none_or(|(_, op, v)| match op.as_str() {
                "eq" => n == *v,
                "ne" => n != *v,
                "lt" => n < *v,
                "gt" => n > *v,
                "lte" => n <= *v,
                _ => n >= *v,
            })
    };
    if policies.iter().any(|p| p.deny && applies(p)) {
        return false;
    }
    policies.iter().any(|p| !p.deny && applies(p))
}

fn name() -> impl Strategy<Value = String> {
    prop::sample::select(vec!["a", "b", "a.b", "a:b", "ab", "b.a", ""]).prop_map(str::to_string)
}

fn pattern() -> impl Strategy<Value = String> {
    prop::collection::vec(prop::sample::select(vec!["a", "b", ".", ":", "*"]), 0..5).prop_map(|v| v.concat())
}

fn ref_policy() -> impl Strategy<Value = RefPolicy> {
    (pattern(), pattern(), any::<bool>(), prop::option::of((prop::sample::select(vec!["eq", "ne", "lt", "gt", "lte", "gte"]), -2i64..3)))
        .prop_map(|(a, r, deny, c)| RefPolicy { action: a, resource: r, deny, cond: c.map(|(op, v)| ("actor.meta.n".into(), op.to_string(), v)) })
}

proptest! {
    // The same inputs on every run (CI must not fail on a draw the next run does not
    // repeat); `PROPTEST_RNG_SEED` and `PROPTEST_CASES` explore further by hand.
    #![proptest_config({
        let d = ProptestConfig::default();
        let rng_seed = match d.rng_seed { RngSeed::Random => RngSeed::Fixed(0x5EED), s => s };
        ProptestConfig { cases: d.cases.max(1024), rng_seed, failure_persistence: None, ..d }
    })]
    #[test]
    fn the_evaluator_agrees_with_the_reference(
        policies in prop::collection::vec(ref_policy(), 0..6),
        n in -2i64..3,
        action in name(),
        resource in name(),
    ) {
        let compiled: Vec<Arc<Policy>> = policies.iter().map(|p| {
            let conditions = p.cond.iter().map(|(f, op, v)| cond(f, op, Some(Value::Int(*v)), None)).collect();
            let spec = PolicySpec {
                id: "p".into(),
                actions: vec![if p.action.is_empty() { String::new() } else { p.action.clone() }],
                resources: vec![p.resource.clone()],
                effect: if p.deny { "deny".into() } else { "allow".into() },
                conditions,
            };
            Arc::new(spec.compile().unwrap())
        }).collect();
        let id = identity(actor("x", &[("n", Value::Int(n))]), compiled);
        prop_assert_eq!(ask(&id, &action, &resource), reference(&policies, n, &action, &resource));
    }
}

// ---- checks on process operations ----

/// A native process under `identity` that tries one operation and reports its result.
fn attempt(node: &Node, identity: Identity, op: impl FnOnce(&mut Context<'_>) -> Result<(), Error> + Send + 'static) -> Result<(), Error> {
    let (tx, rx) = std::sync::mpsc::channel();
    let mut op = Some(op);
    let p = handler_fn(move |cx, _| {
        if let Some(op) = op.take() {
            let _ = tx.send(op(cx));
        }
        Flow::stop(())
    });
    let pid = node.spawn(HOST, Spawn::process(p).identity(Arc::new(identity))).unwrap();
    node.send(pid, "go", Payload::new()).unwrap();
    rx.recv_timeout(LIMIT).unwrap()
}

#[test]
fn denied_operations_do_nothing_and_name_action_and_resource() {
    let node = node(2);
    let (target, events) = probe(&node.handle(), HOST);
    started(&events);
    let tenant = || identity(actor("tenant:1", &[]), vec![policy(&["process.spawn", "process.host"], &["*"], "allow", vec![])]);
    let e = attempt(&node, tenant(), move |cx| cx.send(target, "hi", Payload::new())).unwrap_err();
    assert_eq!(e.kind, ErrorKind::PermissionDenied);
    assert_eq!(e.message, format!("permission denied: process.send on {target}"));
    for (action, op) in [
        ("process.terminate", Box::new(move |cx: &mut Context<'_>| cx.terminate(target)) as Box<dyn FnOnce(&mut Context<'_>) -> Result<(), Error> + Send>),
        ("process.cancel", Box::new(move |cx: &mut Context<'_>| cx.cancel(target, "x"))),
        ("process.link", Box::new(move |cx: &mut Context<'_>| cx.link(target))),
        ("process.monitor", Box::new(move |cx: &mut Context<'_>| cx.monitor(target))),
        ("process.registry.foreign", Box::new(move |cx: &mut Context<'_>| cx.register_for("stolen", target))),
        ("process.registry.register", Box::new(|cx: &mut Context<'_>| cx.register("mine"))),
    ] {
        let e = attempt(&node, tenant(), op).unwrap_err();
        assert!(e.message.starts_with(&format!("permission denied: {action} on ")), "{}", e.message);
    }
    // Nothing reached the target, and nothing was registered.
    assert!(events.try_recv().is_err(), "the target's mailbox must stay empty");
    assert!(node.is_alive(target));
    assert_eq!(node.lookup("stolen"), None);
    assert_eq!(node.lookup("mine"), None);
}

#[test]
fn spawning_needs_host_and_entry_and_escalation_needs_process_security() {
    let node = node(2);
    node.add_host(HostConfig::new("sys").workers(1).stop_timeout(std::time::Duration::from_millis(50))).unwrap();
    static MADE: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);
    node.register_entry(
        "app:child",
        Arc::new(|_: &str| -> Result<Box<dyn Process>, Error> {
            MADE.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
            Ok(Box::new(handler_fn(|_, _| Flow::stop(1))))
        }),
    );
    let user = || identity(actor("u", &[]), vec![policy(&["process.spawn"], &["app:*"], "allow", vec![]), policy(&["process.host"], &[HOST], "allow", vec![])]);
    assert!(attempt(&node, user(), |cx| cx.spawn(Spawn::entry("app:child")).map(|_| ())).is_ok());
    let e = attempt(&node, user(), |cx| cx.spawn_on("sys", Spawn::entry("app:child")).map(|_| ())).unwrap_err();
    assert_eq!(e.message, "permission denied: process.host on sys");
    let e = attempt(&node, user(), |cx| cx.spawn(Spawn::entry("app:child").linked()).map(|_| ())).unwrap_err();
    assert_eq!(e.message, "permission denied: process.spawn.linked on app:child");
    // with_actor without process.security: refused, nothing spawned.
    let before = MADE.load(std::sync::atomic::Ordering::SeqCst);
    assert_eq!(before, 1, "only the allowed spawn made a child");
    let root = Arc::new(Identity::new(Some(actor("root", &[])), None));
    let e = attempt(&node, user(), move |cx| cx.spawn(Spawn::entry("app:child").identity(root)).map(|_| ())).unwrap_err();
    assert_eq!(e.message, "permission denied: process.security on security");
    assert_eq!(MADE.load(std::sync::atomic::Ordering::SeqCst), before, "nothing was spawned");
}

#[test]
fn children_inherit_identity_and_hosts_force_theirs() {
    let node = node(2);
    let forced = Identity::new(Some(actor("sandbox:user", &[])), Some(Arc::new(Scope::new(vec![policy(&["*"], &["*"], "deny", vec![])]))));
    let mut cfg = HostConfig::new("sandbox").workers(1).stop_timeout(std::time::Duration::from_millis(50));
    cfg.security = Arc::new(HostSecurity { identity: Some(Arc::new(forced)), ..HostSecurity::default() });
    node.add_host(cfg).unwrap();
    let (tx, rx) = std::sync::mpsc::channel();
    let (target, _events) = probe(&node.handle(), HOST);
    let p = handler_fn(move |cx, _| {
        let who = cx.identity().and_then(|i| i.actor.as_ref()).map(|a| a.id.clone());
        let _ = tx.send((who, cx.send(target, "x", Payload::new()).is_ok()));
        Flow::stop(())
    });
    let pid = node.spawn("sandbox", Spawn::process(p)).unwrap();
    node.send(pid, "go", Payload::new()).unwrap();
    assert_eq!(rx.recv_timeout(LIMIT).unwrap(), (Some("sandbox:user".to_string()), false));
}

#[test]
fn host_boundaries_stop_sends_across_them() {
    let node = node(2);
    let mut sys = HostConfig::new("sys").workers(1).stop_timeout(std::time::Duration::from_millis(50));
    sys.security = Arc::new(HostSecurity { receive_from: Some(vec![HOST.to_string()]), ..HostSecurity::default() });
    node.add_host(sys).unwrap();
    let mut sandbox = HostConfig::new("sandbox").workers(1).stop_timeout(std::time::Duration::from_millis(50));
    sandbox.security = Arc::new(HostSecurity { send_to: Some(vec!["sandbox".to_string()]), ..HostSecurity::default() });
    node.add_host(sandbox).unwrap();
    let (sys_target, sys_events) = probe(&node.handle(), "sys");
    started(&sys_events);
    let (tx, rx) = std::sync::mpsc::channel();
    let p = handler_fn(move |cx, _| {
        let _ = tx.send(cx.send(sys_target, "x", Payload::new()));
        Flow::stop(())
    });
    let pid = node.spawn("sandbox", Spawn::process(p)).unwrap();
    node.send(pid, "go", Payload::new()).unwrap();
    let e = rx.recv_timeout(LIMIT).unwrap().unwrap_err();
    assert_eq!(e.kind, ErrorKind::PermissionDenied);
    assert!(e.message.contains("from host sandbox to host sys"), "{}", e.message);
    assert!(sys_events.try_recv().is_err(), "nothing delivered");
}

#[test]
fn strict_mode_denies_processes_without_an_actor() {
    let node = node(2);
    node.security().set_strict(true);
    let (target, events) = probe(&node.handle(), HOST);
    started(&events);
    let e = attempt(&node, Identity::default(), move |cx| cx.send(target, "x", Payload::new())).unwrap_err();
    assert_eq!(e.kind, ErrorKind::PermissionDenied);
    assert!(events.try_recv().is_err());
}

#[test]
fn policies_can_look_at_the_target_process() {
    // Tenants may message only processes of their own organisation.
    let node = node(2);
    let same_org = policy(&["process.send"], &["*"], "allow", vec![cond("meta.target.actor.meta.org", "eq", None, Some("actor.meta.org"))]);
    let member = |id: &str, org: &str| identity(actor(id, &[("org", Value::str(org))]), vec![same_org.clone()]);
    let (tx, rx) = std::sync::mpsc::channel::<Event>();
    let peer = node
        .spawn(HOST, Spawn::process(handler_fn(move |_, ev| {
            let _ = tx.send(ev);
            Flow::Continue
        })).identity(Arc::new(member("acme:2", "acme"))))
        .unwrap();
    assert!(attempt(&node, member("acme:1", "acme"), move |cx| cx.send(peer, "hi", Payload::new())).is_ok());
    let e = attempt(&node, member("globex:1", "globex"), move |cx| cx.send(peer, "hi", Payload::new())).unwrap_err();
    assert_eq!(e.kind, ErrorKind::PermissionDenied);
    // The allowed "hi" arrives; then a marker sent after both attempts: nothing between.
    let topics = |ev: Event| match ev {
        Event::Message(m) => Some(m.topic.as_str().to_string()),
        _ => None,
    };
    while topics(rx.recv_timeout(LIMIT).unwrap()).as_deref() != Some("hi") {}
    node.send(peer, "end", Payload::new()).unwrap();
    let mut between = Vec::new();
    loop {
        match topics(rx.recv_timeout(LIMIT).unwrap()) {
            Some(t) if t == "end" => break,
            Some(t) => between.push(t),
            None => {}
        }
    }
    assert!(between.is_empty(), "only the same-organisation message arrived: {between:?}");
}
