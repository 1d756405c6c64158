//! Several nodes in one test process, each its own `Node` with its own connection to a real
//! NATS server the test starts (SPEC §13): remote send, link, monitor, node down, names.

#[path = "../../runtime/tests/common/mod.rs"]
mod common;
mod support;

use std::sync::mpsc::{channel, Receiver};
use std::time::{Duration, Instant};

use common::{probe, probe_with, HOST, LIMIT};
use support::Nats;
use wippy_cluster::{Auth, Cluster, Config, Fault};
use wippy_runtime::*;

struct TestNode {
    node: Node,
    cluster: Cluster,
}

fn config(nats: &Nats, name: &str) -> Config {
    Config::new(name, vec![nats.url()])
}

fn join_with(config: Config) -> Result<TestNode, Error> {
    let node = Node::named(Some(&config.node)).unwrap();
    node.add_host(HostConfig::new(HOST).workers(2).stop_timeout(Duration::from_millis(100))).unwrap();
    let cluster = Cluster::join(&node.handle(), config)?;
    Ok(TestNode { node, cluster })
}

fn join(nats: &Nats, name: &str) -> TestNode {
    join_with(config(nats, name)).unwrap()
}

/// Nodes that all see each other.
fn cluster(nats: &Nats, names: &[&str]) -> Vec<TestNode> {
    let nodes: Vec<TestNode> = names.iter().map(|n| join(nats, n)).collect();
    for n in &nodes {
        assert!(n.cluster.wait_for(LIMIT, |m| m.len() == names.len()), "{} sees {:?}", n.cluster.node_id(), n.cluster.members());
    }
    nodes
}

/// Nodes that all see each other, with this STRONG deadline and silence limit.
fn strong_cluster(nats: &Nats, names: &[&str], strong_deadline: Duration, silent_after: Duration) -> Vec<TestNode> {
    let nodes: Vec<TestNode> = names
        .iter()
        .map(|n| {
            let mut c = config(nats, n);
            c.strong_deadline = strong_deadline;
            c.silent_after = silent_after;
            join_with(c).unwrap()
        })
        .collect();
    for n in &nodes {
        assert!(n.cluster.wait_for(LIMIT, |m| m.len() == names.len()));
    }
    nodes
}

/// Run `f` inside a fresh process on `node` and hand back what it returns.
fn within<R: Send + 'static>(node: &NodeRef, f: impl FnOnce(&mut Context<'_>) -> R + Send + 'static) -> R {
    probe_doing(node, f).2
}

/// A probe on `node` whose first act is `f` (a link, a monitor, ...): its PID, its events,
/// and what `f` returned.
fn probe_doing<R: Send + 'static>(node: &NodeRef, f: impl FnOnce(&mut Context<'_>) -> R + Send + 'static) -> (Pid, Receiver<Event>, R) {
    let (tx, rx) = channel();
    let (pid, events) = probe_with(node, HOST, move |cx| {
        let _ = tx.send(f(cx));
    });
    (pid, events, rx.recv_timeout(LIMIT).expect("the probe started"))
}

fn next_message(rx: &Receiver<Event>, topic: &str) -> Message {
    let deadline = Instant::now() + LIMIT;
    loop {
        match rx.recv_timeout(deadline.saturating_duration_since(Instant::now())) {
            Ok(Event::Message(m)) if m.topic == topic => return m,
            Ok(_) => continue,
            Err(_) => panic!("no '{topic}' message"),
        }
    }
}

fn next_exit(rx: &Receiver<Event>) -> (Pid, ExitResult) {
    loop {
        match rx.recv_timeout(LIMIT).expect("an EXIT") {
            Event::Exit { from, result, .. } => return (from, result),
            _ => continue,
        }
    }
}

fn next_link_down(rx: &Receiver<Event>) -> (Pid, Error) {
    loop {
        match rx.recv_timeout(LIMIT).expect("a LINK_DOWN") {
            Event::LinkDown { from, error, .. } => return (from, error),
            _ => continue,
        }
    }
}

/// Wait for `cond` (checked on every change of state it reads; `LIMIT` is only the bound).
fn eventually(what: &str, cond: impl Fn() -> bool) {
    let deadline = Instant::now() + LIMIT;
    while !cond() {
        assert!(Instant::now() < deadline, "never: {what}");
        std::thread::yield_now();
        std::thread::sleep(Duration::from_millis(2));
    }
}

#[test]
fn pids_name_their_node_and_messages_cross_in_order_per_sender() {
    let nats = Nats::start();
    let nodes = cluster(&nats, &["a", "b"]);
    let (a, b) = (&nodes[0], &nodes[1]);
    let (sink, rx) = probe(&b.node, HOST);
    assert!(sink.to_string().starts_with("{b@app:processes|0x"), "{sink}");
    // the PID travels as a plain string and parses back on the other node
    let sink: Pid = sink.to_string().parse().unwrap();
    const SENDERS: usize = 4;
    const EACH: i64 = 2000;
    let mut senders = Vec::new();
    for _ in 0..SENDERS {
        senders.push(within(&a.node, move |cx| {
            for i in 0..EACH {
                cx.send1(sink, "n", i).unwrap();
            }
            cx.pid()
        }));
    }
    let mut next = std::collections::HashMap::new();
    for _ in 0..SENDERS as i64 * EACH {
        let m = next_message(&rx, "n");
        let want = next.entry(m.from).or_insert(0i64);
        assert_eq!(m.first().as_int(), Some(*want), "per-sender order from {}", m.from);
        *want += 1;
    }
    assert_eq!(next.len(), SENDERS);
    assert!(senders.iter().all(|s| next[s] == EACH));
    assert_eq!(a.cluster.garbage_frames() + b.cluster.garbage_frames(), 0);
}

#[test]
fn send_by_name_link_and_monitor_across_nodes() {
    let nats = Nats::start();
    let nodes = cluster(&nats, &["a", "b"]);
    let (a, b) = (&nodes[0], &nodes[1]);
    let (svc, svc_rx) = probe(&b.node, HOST);
    let r = within(&b.node, move |cx| cx.register_scoped("svc", svc, NameScope::Consistent));
    r.unwrap();
    eventually("a resolves svc", || within(&a.node, |cx| cx.lookup("svc")) == Some(svc));
    within(&a.node, |cx| cx.send1("svc", "hello", "from a")).unwrap();
    assert_eq!(next_message(&svc_rx, "hello").first().as_str(), Some("from a"));

    // a monitor fires with the remote exit's result; a trapping link gets LINK_DOWN
    // a process of a that links to svc and traps
    let (_lp, lp_rx, r) = probe_doing(&a.node, move |cx| { cx.set_trap_links(true); cx.link(svc) });
    r.unwrap();
    let (_mp, mp_rx, r) = probe_doing(&a.node, move |cx| cx.monitor(svc));
    r.unwrap();
    eventually("b holds the remote link and monitor", || {
        b.node.processes(None).iter().any(|p| p.pid == svc && p.links.len() == 1 && p.monitors.len() == 1)
    });
    b.node.send(svc, "fail", payload!["boom"]).unwrap();
    let (from, result) = next_exit(&mp_rx);
    assert_eq!(from, svc);
    assert_eq!(result.unwrap_err().message, "boom");
    let (from, error) = next_link_down(&lp_rx);
    assert_eq!((from, error.message.as_str()), (svc, "boom"));
    // the name died with its owner, on every node
    eventually("svc released everywhere", || within(&a.node, |cx| cx.lookup("svc")).is_none() && within(&b.node, |cx| cx.lookup("svc")).is_none());
}

#[test]
fn a_link_kills_a_non_trapping_process_across_nodes_and_terminate_and_cancel_reach() {
    let nats = Nats::start();
    let nodes = cluster(&nats, &["a", "b"]);
    let (a, b) = (&nodes[0], &nodes[1]);
    let (target, t_rx) = probe(&b.node, HOST);
    let (victim, _v_rx, r) = probe_doing(&a.node, move |cx| cx.link(target));
    r.unwrap();
    let (_w, w_rx) = probe_with(&a.node, HOST, move |cx| cx.monitor(victim).unwrap());
    eventually("b holds the link", || b.node.processes(None).iter().any(|p| p.pid == target && p.links == vec![victim]));
    // CANCEL crosses with its reason and sender
    let canceller = within(&a.node, move |cx| {
        cx.cancel(target, "please stop").unwrap();
        cx.pid()
    });
    loop {
        match t_rx.recv_timeout(LIMIT).unwrap() {
            Event::Cancel { from, reason, .. } => {
                assert_eq!((from, reason.as_str()), (canceller, "please stop"));
                break;
            }
            _ => continue,
        }
    }
    // terminate from a: b's process ends "terminated", which is abnormal: the link kills victim
    within(&a.node, move |cx| cx.terminate(target)).unwrap();
    let (from, result) = next_exit(&w_rx);
    assert_eq!(from, victim);
    assert!(result.unwrap_err().message.contains("linked process failed"));
}

#[test]
fn node_down_fires_links_and_monitors_within_a_second_on_connection_loss() {
    let nats = Nats::start();
    let nodes = cluster(&nats, &["a", "b"]);
    let (a, b) = (&nodes[0], &nodes[1]);
    let (remote, _r) = probe(&b.node, HOST);
    let (_m, m_rx, r) = probe_doing(&a.node, move |cx| cx.monitor(remote));
    r.unwrap();
    let (_l, l_rx, r) = probe_doing(&a.node, move |cx| { cx.set_trap_links(true); cx.link(remote) });
    r.unwrap();
    let (plain, _p, r) = probe_doing(&a.node, move |cx| cx.link(remote));
    r.unwrap();
    let (_w, w_rx) = probe_with(&a.node, HOST, move |cx| cx.monitor(plain).unwrap());
    eventually("b holds them", || b.node.processes(None).iter().any(|p| p.pid == remote && p.links.len() == 2 && p.monitors.len() == 1));

    let t0 = Instant::now();
    b.cluster.fault(Fault::Disconnect);
    let (from, result) = next_exit(&m_rx);
    let took = t0.elapsed();
    assert_eq!(from, remote);
    assert_eq!(result.unwrap_err().message, NODE_DISCONNECTED);
    let (from, error) = next_link_down(&l_rx);
    assert_eq!((from, error.message.as_str()), (remote, NODE_DISCONNECTED));
    let (from, result) = next_exit(&w_rx);
    assert_eq!(from, plain);
    assert!(result.unwrap_err().message.contains("linked process failed"));
    // the bound the issue sets (not a timing assertion on speed: an upper limit on detection)
    assert!(took < Duration::from_secs(1), "connection loss took {took:?} to detect");
    assert!(a.cluster.wait_for(LIMIT, |m| m.len() == 1));
    // a PID of the dead node, and of a node that never was, is NotFound
    let e = within(&a.node, move |cx| cx.send1(remote, "x", 1)).unwrap_err();
    assert_eq!(e.kind, ErrorKind::NotFound, "{e}");
    let ghost: Pid = "{nobody@app:processes|0x1}".parse().unwrap();
    let e = within(&a.node, move |cx| cx.send1(ghost, "x", 1)).unwrap_err();
    assert_eq!((e.kind, e.message.contains("node not found")), (ErrorKind::NotFound, true), "{e}");
}

#[test]
fn a_silent_node_is_declared_down_within_three_seconds() {
    let nats = Nats::start();
    let nodes = cluster(&nats, &["a", "b"]);
    let (a, b) = (&nodes[0], &nodes[1]);
    let (remote, _r) = probe(&b.node, HOST);
    let (_m, m_rx, r) = probe_doing(&a.node, move |cx| cx.monitor(remote));
    r.unwrap();
    let t0 = Instant::now();
    b.cluster.fault(Fault::Silence);
    let (from, result) = next_exit(&m_rx);
    let took = t0.elapsed();
    assert_eq!((from, result.unwrap_err().message.as_str()), (remote, NODE_DISCONNECTED));
    assert!(took < Duration::from_secs(3), "silent failure took {took:?} to detect");
}

#[test]
fn consistent_names_have_one_owner_and_increasing_fences() {
    let nats = Nats::start();
    let nodes = cluster(&nats, &["a", "b", "c"]);
    // every node races for one name, many times
    let mut last_fence = 0;
    for round in 0..5 {
        let name = format!("leader-{round}");
        let (tx, rx) = channel();
        let mut owners = Vec::new();
        for n in &nodes {
            let (tx, name) = (tx.clone(), name.clone());
            let (pid, _) = probe_with(&n.node, HOST, move |cx| {
                let _ = tx.send((cx.pid(), cx.register_scoped(&name, cx.pid(), NameScope::Consistent)));
            });
            owners.push(pid);
        }
        let results: Vec<(Pid, Result<(), Error>)> = (0..nodes.len()).map(|_| rx.recv_timeout(LIMIT).unwrap()).collect();
        let winners: Vec<Pid> = results.iter().filter(|(_, r)| r.is_ok()).map(|(p, _)| *p).collect();
        assert_eq!(winners.len(), 1, "{results:?}");
        for (_, r) in &results {
            if let Err(e) = r {
                assert_eq!(e.kind, ErrorKind::AlreadyExists, "{e}");
            }
        }
        // every node agrees on the owner and the fence token
        for n in &nodes {
            let name = name.clone();
            eventually("the owner is visible", || n.node.remote().unwrap().fence(&name).map(|f| f.0) == Some(winners[0]));
        }
        let fence = nodes[0].node.remote().unwrap().fence(&name).unwrap().1;
        assert!(fence > last_fence, "fence {fence} after {last_fence}");
        for n in &nodes {
            assert_eq!(n.node.remote().unwrap().fence(&name).unwrap().1, fence);
        }
        last_fence = fence;
    }
}

#[test]
fn a_node_that_joins_later_resolves_the_names_already_held() {
    let nats = Nats::start();
    let a = join(&nats, "a");
    let (p, _) = probe(&a.node, HOST);
    within(&a.node, move |cx| cx.register_scoped("early", p, NameScope::Consistent)).unwrap();
    let t0 = Instant::now();
    let b = join(&nats, "b");
    // joining waits until the replica has caught up: resolvable at once
    assert_eq!(within(&b.node, |cx| cx.lookup("early")), Some(p));
    assert!(t0.elapsed() < Duration::from_secs(3), "joining took {:?}", t0.elapsed());
}

#[test]
fn names_are_released_when_their_node_dies() {
    let nats = Nats::start();
    let nodes = cluster(&nats, &["a", "b"]);
    let (a, b) = (&nodes[0], &nodes[1]);
    let (owner, _o) = probe(&b.node, HOST);
    within(&b.node, move |cx| cx.register_scoped("held", owner, NameScope::Consistent)).unwrap();
    eventually("a sees it", || within(&a.node, |cx| cx.lookup("held")) == Some(owner));
    b.cluster.fault(Fault::Disconnect);
    eventually("released on a", || within(&a.node, |cx| cx.lookup("held")).is_none());
    // and can be taken again
    let (p, _) = probe(&a.node, HOST);
    within(&a.node, move |cx| cx.register_scoped("held", p, NameScope::Consistent)).unwrap();
}

#[test]
fn strong_waits_for_every_live_node_and_names_the_missing() {
    let nats = Nats::start();
    let nodes = strong_cluster(&nats, &["a", "b", "c"], Duration::from_millis(800), Duration::from_secs(5));
    let (p, _) = probe(&nodes[0].node, HOST);
    within(&nodes[0].node, move |cx| cx.register_scoped("ctl", p, NameScope::Strong)).unwrap();
    // once register returns, every live node resolves it (no stale window)
    for n in &nodes {
        assert_eq!(within(&n.node, |cx| cx.lookup("ctl")), Some(p));
    }
    nodes[2].cluster.fault(Fault::Silence);
    let (q, _) = probe(&nodes[0].node, HOST);
    let e = within(&nodes[0].node, move |cx| cx.register_scoped("ctl2", q, NameScope::Strong)).unwrap_err();
    assert_eq!(e.kind, ErrorKind::Timeout, "{e}");
    assert!(e.message.contains("missing c"), "{e}");
    assert!(within(&nodes[0].node, |cx| cx.lookup("ctl2")).is_none());
}

#[test]
fn eventual_names_resolve_everywhere_and_a_conflict_has_one_winner() {
    let nats = Nats::start();
    let nodes = cluster(&nats, &["a", "b"]);
    let (pa, a_rx) = probe(&nodes[0].node, HOST);
    let (pb, b_rx) = probe(&nodes[1].node, HOST);
    let ra = within(&nodes[0].node, move |cx| cx.register_scoped("presence", pa, NameScope::Eventual));
    let rb = within(&nodes[1].node, move |cx| cx.register_scoped("presence", pb, NameScope::Eventual));
    // both may be accepted locally; the nodes converge on one owner, the other is revoked
    eventually("converged", || {
        let x = within(&nodes[0].node, |cx| cx.lookup("presence"));
        x.is_some() && x == within(&nodes[1].node, |cx| cx.lookup("presence"))
    });
    let owner = within(&nodes[0].node, |cx| cx.lookup("presence")).unwrap();
    if ra.is_ok() && rb.is_ok() {
        let loser_rx = if owner == pa { &b_rx } else { &a_rx };
        loop {
            match loser_rx.recv_timeout(LIMIT).expect("the loser is told") {
                Event::Cancel { reason, .. } => {
                    assert_eq!(reason.as_str(), "name revoked: presence");
                    break;
                }
                _ => continue,
            }
        }
    }
}

#[test]
fn the_server_restarting_loses_no_node_and_no_name() {
    let mut nats = Nats::start();
    let nodes = cluster(&nats, &["a", "b"]);
    let (a, b) = (&nodes[0], &nodes[1]);
    let (svc, rx) = probe(&b.node, HOST);
    within(&b.node, move |cx| cx.register_scoped("kept", svc, NameScope::Consistent)).unwrap();
    nats.restart();
    // both reconnect by themselves; the name is still there, messages flow again
    eventually("a reaches svc by name after the restart", || {
        within(&a.node, |cx| cx.send1("kept", "ping", 1)).is_ok() && rx.try_iter().any(|e| matches!(e, Event::Message(m) if m.topic == "ping"))
    });
    assert!(a.cluster.wait_for(LIMIT, |m| m.len() == 2));
    assert!(b.node.is_alive(svc));
}

#[test]
fn credentials_are_required_and_a_live_name_cannot_be_claimed() {
    let nats = Nats::with_args(&["--user", "wippy", "--pass", "s3cret"]);
    let e = join_with(config(&nats, "a")).err().expect("refused without credentials");
    assert_eq!(e.kind, ErrorKind::Unavailable, "{e}");
    let mut c = config(&nats, "a");
    c.auth = Auth::UserPassword { user: "wippy".into(), password: "s3cret".into() };
    let a = join_with(c.clone()).unwrap();
    let e = join_with(c).err().expect("a second node named a is refused");
    assert_eq!(e.kind, ErrorKind::AlreadyExists, "{e}");
    assert!(e.message.contains("'a' is already live"), "{e}");
    drop(a);
}

#[test]
fn garbage_on_the_cluster_subjects_is_refused_and_nothing_breaks() {
    let nats = Nats::start();
    let nodes = cluster(&nats, &["a", "b"]);
    let (svc, rx) = probe(&nodes[1].node, HOST);
    let client = nodes[0].cluster.client().clone();
    let rt = nodes[0].node.tokio_handle();
    let mut junk: Vec<Vec<u8>> = vec![vec![], vec![0xff; 64], b"hello".to_vec(), vec![0x01, 0xa1, b'a', 0x05, 0x00]];
    // a well-formed frame that claims to come from a but names a PID of b as its sender
    let mut forged = Vec::new();
    wippy_cluster::wire::write_header(&mut forged, "a", 1);
    wippy_cluster::wire::write_msg(&mut forged, svc, "h", None, svc, "forged", &payload![1]);
    junk.push(forged);
    for (i, j) in junk.into_iter().enumerate() {
        let c = client.clone();
        rt.block_on(async move {
            for s in ["wippy.node.b", "wippy.hb", "wippy.down", "wippy.leave", "wippy.sync.b"] {
                c.publish(s, j.clone().into()).await.unwrap();
            }
            c.flush().await.unwrap();
        });
        let _ = i;
    }
    eventually("b refused them", || nodes[1].cluster.garbage_frames() >= 4);
    // still one cluster, still working
    within(&nodes[0].node, move |cx| cx.send1(svc, "real", 1)).unwrap();
    let m = next_message(&rx, "real");
    assert_eq!(m.first().as_int(), Some(1));
    assert!(rx.try_iter().all(|e| !matches!(e, Event::Message(m) if m.topic == "forged")));
    assert_eq!(nodes[0].cluster.members().len(), 2);
}

#[test]
fn spawn_onto_another_nodes_host_with_that_nodes_policies_deciding() {
    let nats = Nats::start();
    let nodes = cluster(&nats, &["a", "b"]);
    let (a, b) = (&nodes[0], &nodes[1]);
    // b's entry: a process that reports its arguments to whoever it is told, then waits
    b.node.register_entry(
        "app:reporter",
        std::sync::Arc::new(|_: &str| -> Result<Box<dyn Process>, Error> {
            struct Reporter;
            impl Handler for Reporter {
                fn started(&mut self, cx: &mut Context<'_>, args: Vec<Value>) -> Flow {
                    let to: Pid = args[0].as_str().unwrap().parse().unwrap();
                    cx.send1(to, "hello", args[1].clone()).unwrap();
                    Flow::Continue
                }
                fn handle(&mut self, _: &mut Context<'_>, ev: Event) -> Flow {
                    match ev {
                        Event::Message(m) if m.topic == "fail" => Flow::fail(Error::internal("asked to fail")),
                        _ => Flow::Continue,
                    }
                }
            }
            Ok(Box::new(HandlerProcess(Reporter)))
        }),
    );
    let (sink, rx) = probe(&a.node, HOST);
    let child = within(&a.node, move |cx| {
        cx.spawn_on(&format!("b@{HOST}"), Spawn::entry("app:reporter").arg(sink.to_string()).arg("hi").monitored())
    })
    .unwrap();
    assert_eq!(child.node().as_str(), "b");
    assert!(b.node.is_alive(child));
    let m = next_message(&rx, "hello");
    assert_eq!((m.from, m.first().as_str()), (child, Some("hi")));
    // unknown entries, hosts and nodes are errors from the node that decides
    let e = within(&a.node, |cx| cx.spawn_on(&format!("b@{HOST}"), Spawn::entry("app:nothing"))).unwrap_err();
    assert_eq!(e.kind, ErrorKind::NotFound, "{e}");
    let e = within(&a.node, |cx| cx.spawn_on("b@no:host", Spawn::entry("app:reporter"))).unwrap_err();
    assert!(e.message.contains("host not found"), "{e}");
    let e = within(&a.node, |cx| cx.spawn_on(&format!("zz@{HOST}"), Spawn::entry("app:reporter"))).unwrap_err();
    assert!(e.message.contains("node not found"), "{e}");
    // b's policies decide: in strict mode, a process without an actor may not spawn there
    b.node.security().set_strict(true);
    let e = within(&a.node, |cx| cx.spawn_on(&format!("b@{HOST}"), Spawn::entry("app:reporter").arg("{a@x|0x1}").arg(1))).unwrap_err();
    assert_eq!(e.kind, ErrorKind::PermissionDenied, "{e}");
}

#[test]
fn a_node_restarted_under_its_name_is_a_new_incarnation_whose_old_pids_stay_dead() {
    let nats = Nats::start();
    let b = join(&nats, "b");
    let old = join(&nats, "a");
    assert!(b.cluster.wait_for(LIMIT, |m| m.len() == 2));
    let (old_pid, _) = probe(&old.node, HOST);
    old.cluster.fault(Fault::Disconnect);
    drop(old);
    assert!(b.cluster.wait_for(LIMIT, |m| m.len() == 1));
    let new = join(&nats, "a");
    assert!(b.cluster.wait_for(LIMIT, |m| m.len() == 2));
    let (new_pid, _) = probe(&new.node, HOST);
    assert!(new_pid.seq() > old_pid.seq(), "{new_pid} after {old_pid}");
    assert!(!new.node.is_alive(old_pid));
    // a monitor on the old PID fires at once with "process not found"
    let (_w, w_rx, r) = probe_doing(&b.node, move |cx| cx.monitor(old_pid));
    r.unwrap();
    let (from, result) = next_exit(&w_rx);
    assert_eq!(from, old_pid);
    assert_eq!(result.unwrap_err().kind, ErrorKind::NotFound);
}

#[test]
fn a_registration_waits_for_the_cluster_off_its_worker() {
    // a STRONG name a silent member never acknowledges takes its whole deadline; the
    // process waits for it as a command, so another process on the same one-worker host
    // runs meanwhile (it used to hold the worker for the whole round trip)
    let nats = Nats::start();
    let nodes = strong_cluster(&nats, &["a", "b"], Duration::from_secs(3), Duration::from_secs(10));
    nodes[0].node.add_host(HostConfig::new("one").workers(1)).unwrap();
    nodes[1].cluster.fault(Fault::Silence);
    let (started, waiting) = channel();
    let (_, slow) = probe_with(&nodes[0].node, "one", move |cx| {
        let me = cx.pid();
        let work = cx.register_scoped_later("slow", me, NameScope::Strong).unwrap().expect("the cluster has to answer");
        cx.try_command(Command::Task(work)).unwrap();
        started.send(()).unwrap();
    });
    waiting.recv_timeout(LIMIT).unwrap();
    let (other, other_rx) = probe(&nodes[0].node, "one");
    nodes[0].node.send(other, "ping", Payload::new()).unwrap();
    next_message(&other_rx, "ping");
    // (the probe's own start message aside)
    let started = |e: &Event| matches!(e, Event::Message(m) if m.topic.as_str() == "@started");
    let early = loop {
        match slow.try_recv() {
            Ok(e) if started(&e) => continue,
            r => break r,
        }
    };
    assert!(early.is_err(), "the registration was still waiting while the other process ran: {early:?}");
    let done = loop {
        let e = slow.recv_timeout(LIMIT).unwrap();
        if !started(&e) {
            break e;
        }
    };
    match done {
        Event::Completion { result: Err(e), .. } => assert!(e.kind == ErrorKind::Timeout && e.message.contains("missing b"), "{e}"),
        other => panic!("{other:?}"),
    }
}

/// A file of its own for one test, in the temporary directory.
fn temp_file(name: &str, contents: &str) -> std::path::PathBuf {
    let p = std::env::temp_dir().join(format!("wippy-cluster-{}-{name}", std::process::id()));
    std::fs::write(&p, contents).unwrap();
    p
}

/// Two nodes joined with these settings see each other and a message crosses.
fn joined_and_talking(a: Config, b: Config) {
    let nodes = vec![join_with(a).expect("node a joins"), join_with(b).expect("node b joins")];
    for n in &nodes {
        assert!(n.cluster.wait_for(LIMIT, |m| m.len() == 2), "{} sees {:?}", n.cluster.node_id(), n.cluster.members());
    }
    let (svc, rx) = probe(&nodes[1].node, HOST);
    within(&nodes[0].node, move |cx| cx.send1(svc, "hello", 1)).unwrap();
    assert_eq!(next_message(&rx, "hello").first().as_int(), Some(1));
}

#[test]
fn an_nkey_admits_a_node_and_a_missing_or_wrong_key_does_not() {
    let user = nkeys::KeyPair::new_user();
    let nats = Nats::with_config(&format!("authorization {{ users = [ {{ nkey: \"{}\" }} ] }}", user.public_key()));
    let e = join_with(config(&nats, "a")).err().expect("refused without a key");
    assert_eq!(e.kind, ErrorKind::Unavailable, "{e}");
    let mut wrong = config(&nats, "a");
    wrong.auth = Auth::NKey(nkeys::KeyPair::new_user().seed().unwrap());
    let e = join_with(wrong).err().expect("refused with another user's key");
    assert_eq!(e.kind, ErrorKind::Unavailable, "{e}");
    let mut a = config(&nats, "a");
    a.auth = Auth::NKey(user.seed().unwrap());
    let mut b = config(&nats, "b");
    b.auth = Auth::NKey(user.seed().unwrap());
    joined_and_talking(a, b);
}

/// A JWT as NATS's decentralised auth reads it: claims signed by `issuer`'s NKey.
fn nats_jwt(issuer: &nkeys::KeyPair, subject: &str, name: &str, nats: &str) -> String {
    use base64::Engine;
    let b64 = |b: &[u8]| base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(b);
    let header = b64(br#"{"typ":"JWT","alg":"ed25519-nkey"}"#);
    let now = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_secs();
    let claims = format!(r#"{{"jti":"{name}{now}","iat":{now},"iss":"{}","name":"{name}","sub":"{subject}","nats":{nats}}}"#, issuer.public_key());
    let signed = format!("{header}.{}", b64(claims.as_bytes()));
    let sig = issuer.sign(signed.as_bytes()).unwrap();
    format!("{signed}.{}", b64(&sig))
}

#[test]
fn a_creds_file_admits_a_node_to_an_operator_mode_server_and_a_forged_one_does_not() {
    // operator -> account (JetStream allowed) -> user, the chain a creds file belongs to
    let operator = nkeys::KeyPair::new_operator();
    let account = nkeys::KeyPair::new_account();
    let user = nkeys::KeyPair::new_user();
    let op_jwt = nats_jwt(&operator, &operator.public_key(), "op", r#"{"type":"operator","version":2}"#);
    let limits = r#"{"subs":-1,"data":-1,"payload":-1,"imports":-1,"exports":-1,"wildcards":true,"conn":-1,"leaf":-1,"mem_storage":-1,"disk_storage":-1,"streams":-1,"consumer":-1}"#;
    let acc_jwt = nats_jwt(&operator, &account.public_key(), "app", &format!(r#"{{"limits":{limits},"type":"account","version":2}}"#));
    let user_nats = r#"{"pub":{},"sub":{},"subs":-1,"data":-1,"payload":-1,"type":"user","version":2}"#;
    let creds = |name: &str, signer: &nkeys::KeyPair| {
        let jwt = nats_jwt(signer, &user.public_key(), "node", user_nats);
        temp_file(
            name,
            &format!(
                "-----BEGIN NATS USER JWT-----\n{jwt}\n------END NATS USER JWT------\n\n\
                 ************************* IMPORTANT *************************\n\n\
                 -----BEGIN USER NKEY SEED-----\n{}\n------END USER NKEY SEED------\n",
                user.seed().unwrap()
            ),
        )
    };
    // JetStream in operator mode needs a system account
    let system = nkeys::KeyPair::new_account();
    let sys_jwt = nats_jwt(&operator, &system.public_key(), "SYS", r#"{"type":"account","version":2}"#);
    let nats = Nats::with_config(&format!(
        "operator: {op_jwt}\nsystem_account: {sys}\nresolver: MEMORY\nresolver_preload: {{ {sys}: {sys_jwt}, {acc}: {acc_jwt} }}\n",
        sys = system.public_key(),
        acc = account.public_key()
    ));
    let e = join_with(config(&nats, "a")).err().expect("refused without credentials");
    assert_eq!(e.kind, ErrorKind::Unavailable, "{e}");
    // the same user, but its JWT signed by an account the operator never issued
    let forged = creds("forged.creds", &nkeys::KeyPair::new_account());
    let mut c = config(&nats, "a");
    c.auth = Auth::CredsFile(forged.clone());
    let e = join_with(c).err().expect("refused with a JWT from an unknown account");
    assert_eq!(e.kind, ErrorKind::Unavailable, "{e}");
    let good = creds("node.creds", &account);
    let (mut a, mut b) = (config(&nats, "a"), config(&nats, "b"));
    a.auth = Auth::CredsFile(good.clone());
    b.auth = Auth::CredsFile(good.clone());
    joined_and_talking(a, b);
    let mut missing = config(&nats, "c");
    missing.auth = Auth::CredsFile(good.with_extension("missing"));
    let e = join_with(missing).err().expect("a creds file that is not there");
    assert_eq!(e.kind, ErrorKind::Invalid, "{e}");
    assert!(e.message.contains("cluster.nats.creds_file"), "{e}");
    for f in [forged, good] {
        let _ = std::fs::remove_file(f);
    }
}

#[test]
fn tls_to_the_server_needs_its_ca_and_a_client_certificate_when_it_verifies_clients() {
    let ca_key = rcgen::KeyPair::generate().unwrap();
    let mut ca_params = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
    ca_params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
    let ca = ca_params.self_signed(&ca_key).unwrap();
    let server_key = rcgen::KeyPair::generate().unwrap();
    let server = rcgen::CertificateParams::new(vec!["127.0.0.1".to_string(), "localhost".to_string()]).unwrap().signed_by(&server_key, &ca, &ca_key).unwrap();
    let client_key = rcgen::KeyPair::generate().unwrap();
    let client = rcgen::CertificateParams::new(vec!["node".to_string()]).unwrap().signed_by(&client_key, &ca, &ca_key).unwrap();
    let ca_file = temp_file("ca.pem", &ca.pem());
    let (cert_file, key_file) = (temp_file("server.pem", &server.pem()), temp_file("server.key", &server_key.serialize_pem()));
    let (client_cert, client_key_file) = (temp_file("client.pem", &client.pem()), temp_file("client.key", &client_key.serialize_pem()));
    let nats = Nats::with_config(&format!(
        "tls {{ cert_file: \"{}\", key_file: \"{}\", ca_file: \"{}\", verify: true }}",
        cert_file.display(),
        key_file.display(),
        ca_file.display()
    ));
    let with = |name: &str, ca: bool, cert: bool| {
        let mut c = config(&nats, name);
        c.tls.required = true;
        c.tls.ca_file = ca.then(|| ca_file.clone());
        if cert {
            (c.tls.cert_file, c.tls.key_file) = (Some(client_cert.clone()), Some(client_key_file.clone()));
        }
        c
    };
    let e = join_with(with("a", false, true)).err().expect("the server's certificate is not trusted without its CA");
    assert_eq!(e.kind, ErrorKind::Unavailable, "{e}");
    let e = join_with(with("a", true, false)).err().expect("the server verifies clients");
    assert_eq!(e.kind, ErrorKind::Unavailable, "{e}");
    joined_and_talking(with("a", true, true), with("b", true, true));
    for f in [ca_file, cert_file, key_file, client_cert, client_key_file] {
        let _ = std::fs::remove_file(f);
    }
}
