//! Fairness, preemption, hosts, process groups, scale without leaks.
mod common;
use common::*;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::mpsc::channel;
use std::sync::Arc;
use std::time::Duration;
use wippy_runtime::*;

/// Ping-pong `n` round trips between two fresh processes; returns when done.
fn pingpong(node: &NodeRef, host: &str, n: i64) -> ExitWatch {
    let pong = node
        .spawn(host, Spawn::process(handler_fn(|cx, ev| {
            if let Event::Message(m) = ev {
                let _ = cx.send1(m.from, "pong", m.first().clone());
            }
            Flow::Continue
        })))
        .unwrap();
    let (ping, w) = node
        .spawn_watched(host, Spawn::process(handler_fn(move |cx, ev| match ev {
            Event::Message(m) if m.topic == "start" || m.topic == "pong" => {
                let k = m.first().as_int().unwrap_or(0);
                if k == n {
                    cx.terminate(pong).unwrap();
                    return Flow::stop(k);
                }
                cx.send1(pong, "ping", k + 1).unwrap();
                Flow::Continue
            }
            _ => Flow::Continue,
        })))
        .unwrap();
    node.send(ping, "start", payload![0]).unwrap();
    w
}

#[test]
fn endless_loop_does_not_stop_others_on_one_worker_and_can_be_terminated() {
    let node = Node::new().unwrap();
    node.add_host(HostConfig::new("one").workers(1).stop_timeout(Duration::from_millis(200))).unwrap();
    let (spinner, sw) = node.spawn_watched("one", Spawn::process(Spinner)).unwrap();
    let (spinner2, sw2) = node.spawn_watched("one", Spawn::process(Spinner)).unwrap();
    // Two busy processes share the single worker, and a ping-pong pair still answers.
    let w = pingpong(&node, "one", 2_000);
    assert_eq!(w.wait_timeout(LIMIT).expect("pair starved by busy loops").unwrap(), Value::Int(2_000));
    assert!(node.is_alive(spinner) && node.is_alive(spinner2));
    node.terminate(spinner).unwrap();
    node.terminate(spinner2).unwrap();
    assert_eq!(sw.wait_timeout(LIMIT).expect("spinner not terminated").unwrap_err().message, "process terminated");
    assert_eq!(sw2.wait_timeout(LIMIT).expect("spinner not terminated").unwrap_err().message, "process terminated");
}

#[test]
fn two_busy_processes_on_one_worker_both_progress() {
    let node = Node::new().unwrap();
    node.add_host(HostConfig::new("one").workers(1).budget(50)).unwrap();
    let counts: Arc<[AtomicU64; 2]> = Arc::new([AtomicU64::new(0), AtomicU64::new(0)]);
    let stop = Arc::new(AtomicBool::new(false));
    struct Counter(usize, Arc<[AtomicU64; 2]>, Arc<AtomicBool>);
    impl Process for Counter {
        fn init(&mut self, _: &mut Context<'_>, _: &str, _: Vec<Value>) -> Status {
            Status::Yield
        }
        fn step(&mut self, cx: &mut Context<'_>, _: &mut Events<'_>) -> Status {
            if self.2.load(Ordering::Relaxed) {
                return Status::Exit(Ok(Value::Nil));
            }
            while cx.consume(1) {}
            self.1[self.0].fetch_add(1, Ordering::Relaxed);
            Status::Yield
        }
    }
    let (_, a) = node.spawn_watched("one", Spawn::process(Counter(0, counts.clone(), stop.clone()))).unwrap();
    let (_, b) = node.spawn_watched("one", Spawn::process(Counter(1, counts.clone(), stop.clone()))).unwrap();
    // Wait (bounded) until the first has run 1000 slices more than it had when the second
    // was spawned (on a loaded machine the first may run many slices before this thread
    // gets to spawn the second), then check the second ran about as many.
    let base = counts[0].load(Ordering::Relaxed);
    let (tx, rx) = channel();
    let c = counts.clone();
    std::thread::spawn(move || {
        while c[0].load(Ordering::Relaxed) < base + 1000 {
            std::thread::yield_now();
        }
        let _ = tx.send(c[1].load(Ordering::Relaxed));
    });
    let other = rx.recv_timeout(LIMIT).unwrap();
    stop.store(true, Ordering::Relaxed);
    a.wait_timeout(LIMIT).unwrap().unwrap();
    b.wait_timeout(LIMIT).unwrap().unwrap();
    assert!(other >= 900, "the second busy process was starved: {other} slices vs 1000");
}

#[test]
fn hosts_have_their_own_pools_and_processes_cross_hosts() {
    let node = Node::new().unwrap();
    node.add_host(HostConfig::new("a").workers(1)).unwrap();
    node.add_host(HostConfig::new("b").workers(2)).unwrap();
    let e = node.add_host(HostConfig::new("a")).unwrap_err();
    assert_eq!(e.kind, ErrorKind::AlreadyExists);
    let e = node.add_host(HostConfig::new("c").workers(0)).unwrap_err();
    assert!(e.message.contains("workers must be positive"), "{e}");
    let (pb, rx) = probe(&node, "b");
    started(&rx);
    assert_eq!(pb.host(), HostName::new("b"));
    assert!(pb.to_string().starts_with("{b|0x"));
    // a process on host a spawns onto b and messages there
    let (tx, trx) = channel();
    node.spawn("a", Spawn::process(HandlerProcess(Cross { tx, target: pb }))).unwrap();
    struct Cross { tx: std::sync::mpsc::Sender<(String, bool)>, target: Pid }
    impl Handler for Cross {
        fn started(&mut self, cx: &mut Context<'_>, _: Vec<Value>) -> Flow {
            let child = cx.spawn_on("b", Spawn::process(exits_with(Ok(Value::Nil)))).unwrap();
            cx.send1(self.target, "hello", "from a").unwrap();
            self.tx.send((child.host().to_string(), cx.host().is_current_thread())).unwrap();
            Flow::stop(())
        }
        fn handle(&mut self, _: &mut Context<'_>, _: Event) -> Flow { Flow::Continue }
    }
    assert_eq!(trx.recv_timeout(LIMIT).unwrap(), ("b".to_string(), true));
    assert!(matches!(next(&rx), Event::Message(m) if m.topic == "hello"));
    // a stopped host refuses spawns
    node.stop_host("a").unwrap();
    assert_eq!(node.spawn("a", Spawn::process(idle())).unwrap_err().kind, ErrorKind::NotFound);
}

/// A process group: many processes stepped by one runnable, as a Lua shard will be.
struct Group {
    ready: parking_lot::Mutex<std::collections::VecDeque<ProcessRef>>,
    queued: AtomicBool,
    host: HostRef,
    me: parking_lot::Mutex<Option<std::sync::Weak<Group>>>,
    runs: AtomicU64,
}
impl ProcessGroup for Group {
    fn schedule(&self, p: ProcessRef, _woken: bool) {
        self.ready.lock().push_back(p);
        if !self.queued.swap(true, Ordering::AcqRel) {
            let me = self.me.lock().as_ref().unwrap().upgrade().unwrap();
            self.host.schedule(me);
        }
    }
}
impl Runnable for Group {
    fn run(self: Arc<Self>) {
        self.runs.fetch_add(1, Ordering::Relaxed);
        self.queued.store(false, Ordering::Release);
        for _ in 0..64 {
            let next = self.ready.lock().pop_front();
            match next {
                Some(p) => p.run(),
                None => return,
            }
        }
        if !self.ready.lock().is_empty() && !self.queued.swap(true, Ordering::AcqRel) {
            self.host.schedule(self.clone());
        }
    }
}

#[test]
fn process_groups_step_their_members_as_one_runnable() {
    let node = node(2);
    let host = node.host(HOST).unwrap();
    let g = Arc::new(Group {
        ready: Default::default(),
        queued: AtomicBool::new(false),
        host,
        me: Default::default(),
        runs: AtomicU64::new(0),
    });
    *g.me.lock() = Some(Arc::downgrade(&g));
    // 100 group members; a token carrying (hops left, next, the one after) bounces
    // between two of them 1000 times, the others idle; whoever gets 0 reports.
    let (tx, rx) = channel();
    let mut members = Vec::new();
    for _ in 0..100 {
        let tx = tx.clone();
        let pid = node
            .spawn(HOST, Spawn::process(handler_fn(move |cx, ev| {
                if let Event::Message(m) = ev {
                    let left = m.first().as_int().unwrap();
                    if left == 0 {
                        tx.send(cx.pid()).unwrap();
                    } else {
                        let next = m.payload[1].as_str().unwrap().parse::<Pid>().unwrap();
                        let after: Pid = m.payload[2].as_str().unwrap().parse().unwrap();
                        let _ = cx.send(next, "t", payload![left - 1, after.to_string(), next.to_string()]);
                    }
                }
                Flow::Continue
            })).in_group(g.clone()))
            .unwrap();
        members.push(pid);
    }
    node.send(members[0], "t", payload![1000, members[1].to_string(), members[0].to_string()]).unwrap();
    let last = rx.recv_timeout(LIMIT).unwrap();
    assert!(last == members[0] || last == members[1]);
    assert!(g.runs.load(Ordering::Relaxed) > 0, "members must run through the group");
}

fn rss_kib() -> u64 {
    let s = std::fs::read_to_string("/proc/self/status").unwrap();
    s.lines().find_map(|l| l.strip_prefix("VmRSS:")).unwrap().trim().trim_end_matches("kB").trim().parse().unwrap()
}

/// Spawn `n` children that exit at once, wait for every EXIT.
fn spawn_wave(node: &NodeRef, n: i64) {
    struct Parent(i64, i64);
    impl Process for Parent {
        fn init(&mut self, _: &mut Context<'_>, _: &str, _: Vec<Value>) -> Status {
            Status::Yield
        }
        fn step(&mut self, cx: &mut Context<'_>, ev: &mut Events<'_>) -> Status {
            while let Some(e) = ev.next() {
                if let Event::Exit { .. } = e {
                    self.1 -= 1;
                }
            }
            while self.0 > 0 && cx.consume(1) {
                cx.spawn(Spawn::process(exits_with(Ok(Value::Nil))).monitored()).unwrap();
                self.0 -= 1;
            }
            if self.0 > 0 {
                Status::Yield
            } else if self.1 == 0 {
                Status::Exit(Ok(Value::Nil))
            } else {
                Status::Wait
            }
        }
    }
    node.exec(HOST, Spawn::process(Parent(n, n))).unwrap();
}

#[test]
fn a_hundred_thousand_processes_spawn_and_exit_without_leaking() {
    let node = node(2);
    spawn_wave(&node, 100_000); // warm-up: allocator pools, table capacity
    let before = rss_kib();
    spawn_wave(&node, 100_000);
    spawn_wave(&node, 100_000);
    let after = rss_kib();
    assert_eq!(node.process_count(), 0, "process table must be empty");
    assert_eq!(node.name_count(), 0);
    assert_eq!(node.host(HOST).unwrap().process_count(), 0);
    // 200,000 leaked cells would be > 40 MB.
    assert!(after < before + 16 * 1024, "RSS grew from {before} KiB to {after} KiB");
}

#[test]
fn a_host_rescales_in_place_while_its_processes_run() {
    use std::collections::HashSet;
    use std::sync::{Arc, Condvar, Mutex};
    let node = node(1);
    let host = node.host(HOST).unwrap();
    assert_eq!(host.workers(), 1);
    // Processes that report the worker thread each message ran on. While `spread` is set,
    // a message's process holds its worker until a second worker has run one too (at most
    // LIMIT): one worker alone can no longer drain a round before the others wake, so
    // whether new workers take work does not depend on how fast the work is.
    let threads = Arc::new((Mutex::new(HashSet::new()), Condvar::new()));
    let spread = Arc::new(AtomicBool::new(false));
    let (tx, rx) = std::sync::mpsc::channel();
    let mut pids = Vec::new();
    for _ in 0..64 {
        let (t, spread, tx) = (threads.clone(), spread.clone(), tx.clone());
        pids.push(
            node.spawn(HOST, Spawn::process(handler_fn(move |_, ev| {
                if let Event::Message(m) = ev {
                    if m.topic.as_str() == "work" {
                        let mut x = 0u64;
                        for i in 0..200_000u64 {
                            x = x.wrapping_add(std::hint::black_box(i * i));
                        }
                        let (seen, cv) = &*t;
                        let mut seen = seen.lock().unwrap();
                        seen.insert(std::thread::current().name().unwrap_or("").to_string());
                        cv.notify_all();
                        if spread.load(Ordering::SeqCst) {
                            drop(cv.wait_timeout_while(seen, LIMIT, |s| s.len() < 2).unwrap());
                        }
                        let _ = tx.send(x);
                    }
                }
                Flow::Continue
            })))
            .unwrap(),
        );
    }
    let threads = || threads.0.lock().unwrap();
    let round = |n: usize| {
        for p in &pids {
            node.send(*p, "work", payload![]).unwrap();
        }
        for _ in 0..n {
            rx.recv_timeout(LIMIT).unwrap();
        }
    };
    round(64);
    assert_eq!(threads().len(), 1);
    assert_eq!(node.rescale_host(HOST, 3).unwrap(), 3);
    assert_eq!(host.workers(), 3);
    threads().clear();
    spread.store(true, Ordering::SeqCst);
    for _ in 0..5 {
        round(64);
    }
    spread.store(false, Ordering::SeqCst);
    assert!(threads().len() > 1, "the new workers took work: {:?}", threads());
    assert_eq!(node.rescale_host(HOST, 1).unwrap(), 1);
    round(64);
    // Shrunk: everything still runs (on the remaining worker once the others have left).
    assert!(pids.iter().all(|p| node.is_alive(*p)));
    // And up again, reusing the slots the stopped workers gave back.
    assert_eq!(node.rescale_host(HOST, 2).unwrap(), 2);
    round(64);
    assert!(node.rescale_host(HOST, 0).is_err());
}
