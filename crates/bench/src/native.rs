//! The six anchor benchmarks with native wippy processes on one host with a worker per
//! core. Each benchmark is driven by a process (like an Erlang process), and the main
//! thread only starts it and waits for its exit result.

use std::time::{Duration, Instant};

use wippy_runtime::*;

use crate::report::*;

const HOST: &str = "bench";

fn node() -> Node {
    let node = Node::new().expect("node");
    // the process limit raised as the anchors raise Erlang's (+P 4194304): skynet has a million leaves
    let mut cfg = HostConfig::new(HOST).max_processes(4_194_304);
    // For experiments only; reported figures use the default (one worker per core).
    if let Some(w) = std::env::var("WIPPY_BENCH_WORKERS").ok().and_then(|v| v.parse().ok()) {
        cfg = cfg.workers(w);
    }
    node.add_host(cfg).expect("host");
    node
}

fn elapsed_value(d: Duration) -> Value {
    Value::Int(d.as_nanos() as i64)
}

fn nanos(v: &Value) -> Duration {
    Duration::from_nanos(v.as_int().unwrap_or(0) as u64)
}

// ------------------------------------------------------------------ spawn
/// Tells its parent "done" and exits, all in its first step.
struct Quick(Pid);
impl Process for Quick {
    fn init(&mut self, cx: &mut Context<'_>, _: &str, _: Vec<Value>) -> Status {
        let _ = cx.send(self.0, "done", Payload::new());
        Status::Exit(Ok(Value::Nil))
    }
    fn step(&mut self, _: &mut Context<'_>, _: &mut Events<'_>) -> Status {
        Status::Exit(Ok(Value::Nil))
    }
}

struct Spawner {
    left: u64,
    waiting: u64,
    t0: Instant,
    issued: Duration,
}
impl Process for Spawner {
    fn init(&mut self, _: &mut Context<'_>, _: &str, _: Vec<Value>) -> Status {
        self.t0 = Instant::now();
        Status::Yield
    }
    fn step(&mut self, cx: &mut Context<'_>, ev: &mut Events<'_>) -> Status {
        while ev.next().is_some() {
            self.waiting -= 1;
        }
        let me = cx.pid();
        while self.left > 0 && cx.consume(1) {
            cx.spawn(Spawn::process(Quick(me))).expect("spawn");
            self.left -= 1;
        }
        if self.left == 0 && self.issued.is_zero() {
            self.issued = self.t0.elapsed();
        }
        if self.waiting == 0 {
            let mut t = Table::new();
            t.push(elapsed_value(self.issued));
            t.push(elapsed_value(self.t0.elapsed()));
            return Status::Exit(Ok(Value::table(t)));
        }
        if self.left > 0 {
            Status::Yield
        } else {
            Status::Wait
        }
    }
}

pub fn spawn() {
    let node = node();
    let r = node
        .exec(HOST, Spawn::process(Spawner { left: SPAWN_N, waiting: SPAWN_N, t0: Instant::now(), issued: Duration::ZERO }))
        .expect("spawn bench");
    let t = r.as_table().unwrap();
    report_spawn("", SPAWN_N, nanos(&t.array[0]), nanos(&t.array[1]));
}

// ------------------------------------------------------------------ memory
/// Waits for a message, then exits.
struct Waiter;
impl Process for Waiter {
    fn step(&mut self, _: &mut Context<'_>, _: &mut Events<'_>) -> Status {
        Status::Exit(Ok(Value::Nil))
    }
}

pub fn memory() {
    let node = node();
    let mut pids = Vec::with_capacity(MEM_N as usize);
    std::thread::sleep(Duration::from_millis(200));
    let rss0 = rss_kib();
    for _ in 0..MEM_N {
        pids.push(node.spawn(HOST, Spawn::process(Waiter)).expect("spawn"));
    }
    std::thread::sleep(Duration::from_millis(1000));
    let rss1 = rss_kib();
    report_memory("", MEM_N, rss0, rss1);
    std::hint::black_box(&pids);
}

// ------------------------------------------------------------------ ping-pong
pub fn pingpong() {
    let node = node();
    let pong = node
        .spawn(HOST, Spawn::process(handler_fn(|cx, ev| {
            if let Event::Message(m) = ev {
                let _ = cx.send(m.from, "pong", Payload::new());
            }
            Flow::Continue
        })))
        .expect("pong");
    let mut left = PINGPONG_M;
    let (ping, done) = node
        .spawn_watched(HOST, Spawn::process(handler_fn(move |cx, ev| {
            if let Event::Message(m) = ev {
                if m.topic == "pong" {
                    left -= 1;
                    if left == 0 {
                        return Flow::stop(());
                    }
                }
                let _ = cx.send(pong, "ping", Payload::new());
            }
            Flow::Continue
        })))
        .expect("ping");
    let t0 = Instant::now();
    node.send(ping, "start", Payload::new()).expect("start");
    done.wait().expect("ping-pong");
    report_pingpong("", PINGPONG_M, t0.elapsed());
}

// ------------------------------------------------------------------ ring
pub fn ring() {
    let node = node();
    let t0 = Instant::now();
    let mut pids = Vec::with_capacity(RING_N as usize);
    let (tx, rx) = std::sync::mpsc::channel();
    for _ in 0..RING_N {
        let tx = tx.clone();
        let mut next: Option<Pid> = None;
        let pid = node
            .spawn(HOST, Spawn::process(handler_fn(move |cx, ev| {
                if let Event::Message(m) = ev {
                    match m.topic.as_str() {
                        "next" => next = m.first().as_str().and_then(|s| s.parse().ok()),
                        _ => {
                            let left = m.first().as_int().unwrap_or(0);
                            if left == 0 {
                                let _ = tx.send(());
                            } else {
                                let _ = cx.send1(next.expect("successor"), "t", left - 1);
                            }
                        }
                    }
                }
                Flow::Continue
            })))
            .expect("ring node");
        pids.push(pid);
    }
    for (i, p) in pids.iter().enumerate() {
        let succ = pids[(i + 1) % pids.len()];
        node.send(*p, "next", payload![succ.to_string()]).expect("link ring");
    }
    let setup = t0.elapsed();
    let hops = RING_N * RING_M;
    let t1 = Instant::now();
    node.send(pids[0], "t", payload![hops as i64]).expect("token");
    rx.recv().expect("ring done");
    report_ring("", RING_N, hops, setup, t1.elapsed());
}

// ------------------------------------------------------------------ fan-in
pub fn fanin() {
    let node = node();
    let total = FANIN_SENDERS * FANIN_MSGS;
    let mut count = 0u64;
    let (receiver, done) = node
        .spawn_watched(HOST, Spawn::process(handler_fn(move |_, ev| {
            if let Event::Message(_) = ev {
                count += 1;
                if count == total {
                    return Flow::stop(());
                }
            }
            Flow::Continue
        })))
        .expect("receiver");
    /// Sends its messages in slices of its budget so the receiver runs meanwhile.
    struct Sender(Pid, u64);
    impl Process for Sender {
        fn step(&mut self, cx: &mut Context<'_>, ev: &mut Events<'_>) -> Status {
            while ev.next().is_some() {}
            while self.1 > 0 && cx.consume(1) {
                let _ = cx.send1(self.0, "m", 1);
                self.1 -= 1;
            }
            if self.1 == 0 {
                Status::Exit(Ok(Value::Nil))
            } else {
                Status::Yield
            }
        }
    }
    let senders: Vec<Pid> = (0..FANIN_SENDERS)
        .map(|_| node.spawn(HOST, Spawn::process(Sender(receiver, FANIN_MSGS))).expect("sender"))
        .collect();
    std::thread::sleep(Duration::from_millis(100));
    let t0 = Instant::now();
    for s in &senders {
        node.send(*s, "go", Payload::new()).expect("go");
    }
    done.wait().expect("fan-in");
    report_fanin(FANIN_SENDERS, total, t0.elapsed());
}

// ------------------------------------------------------------------ skynet
struct Skynet {
    parent: Option<Pid>,
    num: u64,
    size: u64,
    sum: u64,
    replies: u64,
}
impl Process for Skynet {
    fn init(&mut self, cx: &mut Context<'_>, _: &str, _: Vec<Value>) -> Status {
        if self.size == 1 {
            return self.finish(cx, self.num);
        }
        let me = cx.pid();
        let child = self.size / SKYNET_DIV;
        for i in 0..SKYNET_DIV {
            let s = Skynet { parent: Some(me), num: self.num + i * child, size: child, sum: 0, replies: 0 };
            cx.spawn(Spawn::process(s)).expect("skynet spawn");
        }
        Status::Wait
    }
    fn step(&mut self, cx: &mut Context<'_>, ev: &mut Events<'_>) -> Status {
        while let Some(e) = ev.next() {
            if let Event::Message(m) = e {
                self.sum += m.first().as_int().unwrap_or(0) as u64;
                self.replies += 1;
            }
        }
        if self.replies == SKYNET_DIV {
            return self.finish(cx, self.sum);
        }
        Status::Wait
    }
}
impl Skynet {
    fn finish(&mut self, cx: &mut Context<'_>, v: u64) -> Status {
        match self.parent {
            Some(p) => {
                let _ = cx.send1(p, "r", v as i64);
                Status::Exit(Ok(Value::Nil))
            }
            None => Status::Exit(Ok(Value::Int(v as i64))),
        }
    }
}

pub fn skynet() {
    let node = node();
    let t0 = Instant::now();
    let r = node
        .exec(HOST, Spawn::process(Skynet { parent: None, num: 0, size: SKYNET_LEAVES, sum: 0, replies: 0 }))
        .expect("skynet");
    let d = t0.elapsed();
    report_skynet(SKYNET_LEAVES, r.as_int().unwrap_or(0) as u64, d);
}

// ------------------------------------------------------------------ security check
/// One permission check against a scope of 20 policies (patterns, a condition, a deny),
/// the way Context checks an operation: the cost per check.
pub fn security_check() {
    use std::sync::Arc;
    let mut policies = Vec::new();
    for i in 0..18 {
        let spec = PolicySpec {
            id: format!("p{i}"),
            actions: vec![format!("app{i}.*")],
            resources: vec![format!("app{i}:*"), format!("{{app{i}|*")],
            effect: "allow".into(),
            conditions: vec![ConditionSpec { field: "actor.meta.tier".into(), op: "in".into(), value: Some(Value::table({
                let mut t = Table::new();
                t.push(Value::str("gold"));
                t.push(Value::str("silver"));
                t
            })), value_from: None }],
        };
        policies.push(Arc::new(spec.compile().expect("policy")));
    }
    let allow = PolicySpec { id: "send".into(), actions: vec!["process.send".into()], resources: vec!["{app:processes|*".into()], effect: "allow".into(), conditions: vec![] };
    let deny = PolicySpec { id: "no-sys".into(), actions: vec!["process.*".into()], resources: vec!["{system|*".into()], effect: "deny".into(), conditions: vec![] };
    policies.push(Arc::new(allow.compile().expect("policy")));
    policies.push(Arc::new(deny.compile().expect("policy")));
    let mut meta = Table::new();
    meta.set(Value::str("tier"), Value::str("gold"));
    let identity = Identity::new(Some(Arc::new(Actor::new("tenant:42").with_meta(meta))), Some(Arc::new(Scope::new(policies))));
    let n = 2_000_000u64;
    let mut allowed = 0u64;
    let t = Instant::now();
    for i in 0..n {
        let resource = if i % 2 == 0 { "{app:processes|0x00042}" } else { "{system|0x00001}" };
        let req = Request { action: "process.send", resource: std::hint::black_box(resource), pid: None, meta: None, target: None };
        allowed += evaluate(Some(std::hint::black_box(&identity)), false, &req) as u64;
    }
    let d = t.elapsed();
    assert_eq!(allowed, n / 2);
    out("security_policies", 20, "policies");
    out("security_checks", n, "checks");
    outf("security_check_ns", d.as_nanos() as f64 / n as f64, "ns");
}
