//! Spawn, exit results, monitors, links, trap_links, cancel, terminate, exec, names.
mod common;
use common::*;
use std::sync::mpsc::channel;
use wippy_runtime::*;

fn exit_of(ev: Event) -> (Pid, ExitResult) {
    match ev {
        Event::Exit { from, result, at } => {
            assert!(at > 1_600_000_000, "at is unix seconds");
            (from, result)
        }
        e => panic!("expected EXIT, got {e:?}"),
    }
}

/// A parent that spawns `child` with `spawn` options in its init, then forwards events.
fn parent_spawning(node: &NodeRef, make: impl FnOnce(&mut Context<'_>) -> Pid + Send + 'static) -> (Pid, std::sync::mpsc::Receiver<Event>, Pid) {
    let (ctx, crx) = channel();
    let (pid, rx) = probe_with(node, HOST, move |cx| {
        let child = make(cx);
        ctx.send(child).unwrap();
    });
    started(&rx);
    (pid, rx, crx.recv_timeout(LIMIT).unwrap())
}

#[test]
fn instantly_exiting_child_still_produces_exit_for_spawn_monitored() {
    let node = node(2);
    for _ in 0..200 {
        let (_p, rx, child) = parent_spawning(&node, |cx| {
            cx.spawn(Spawn::process(exits_with(Ok(Value::Int(42)))).monitored()).unwrap()
        });
        let (from, result) = exit_of(next(&rx));
        assert_eq!(from, child);
        assert_eq!(result.unwrap(), Value::Int(42));
    }
}

#[test]
fn abnormal_exit_carries_the_error() {
    let node = node(1);
    let (_p, rx, _c) = parent_spawning(&node, |cx| {
        cx.spawn(Spawn::process(exits_with(Err(Error::invalid("bad input")))).monitored()).unwrap()
    });
    let (_, r) = exit_of(next(&rx));
    let e = r.unwrap_err();
    assert_eq!((e.kind, e.message.as_str()), (ErrorKind::Invalid, "bad input"));
}

#[test]
fn panic_in_a_process_is_an_abnormal_exit_not_a_crash() {
    let node = node(1);
    let (_p, rx, child) = parent_spawning(&node, |cx| {
        cx.spawn(Spawn::process(handler_fn(|_, _| -> Flow { panic!("boom") })).monitored()).unwrap()
    });
    node.send(child, "poke", payload![]).unwrap();
    let (from, r) = exit_of(next(&rx));
    assert_eq!(from, child);
    let e = r.unwrap_err();
    assert_eq!(e.kind, ErrorKind::Internal);
    assert!(e.message.contains("panic: boom"), "{e}");
    // The node and the worker still work.
    assert_eq!(node.exec(HOST, Spawn::process(exits_with(Ok(Value::Int(1))))).unwrap(), Value::Int(1));
}

#[test]
fn link_down_cascades_along_a_chain_of_ten_non_trapping_processes() {
    let node = node(2);
    // An unrelated process that must survive the cascade.
    let (bystander, brx) = probe(&node, HOST);
    started(&brx);
    // p0 - p1 - ... - p9 linked in a line.
    let mut chain = Vec::new();
    for _ in 0..10 {
        let prev = chain.last().copied();
        let (tx, rx) = channel();
        let pid = node
            .spawn(HOST, Spawn::process(HandlerProcess(Link { prev, tx: Some(tx) })))
            .unwrap();
        rx.recv_timeout(LIMIT).unwrap();
        chain.push(pid);
    }
    struct Link {
        prev: Option<Pid>,
        tx: Option<std::sync::mpsc::Sender<()>>,
    }
    impl Handler for Link {
        fn started(&mut self, cx: &mut Context<'_>, _: Vec<Value>) -> Flow {
            if let Some(p) = self.prev {
                cx.link(p).unwrap();
            }
            self.tx.take().unwrap().send(()).unwrap();
            Flow::Continue
        }
        fn handle(&mut self, _: &mut Context<'_>, ev: Event) -> Flow {
            match ev {
                Event::Message(m) if m.topic == "crash" => Flow::fail(Error::internal("crashed on purpose")),
                _ => Flow::Continue,
            }
        }
    }
    // A monitor of every link of the chain collects the exits.
    let mons: Vec<Pid> = chain.clone();
    let (mtx, mrx) = channel();
    let monitor = node
        .spawn(HOST, Spawn::process(HandlerProcess(Mon { targets: mons, tx: mtx })))
        .unwrap();
    struct Mon {
        targets: Vec<Pid>,
        tx: std::sync::mpsc::Sender<Event>,
    }
    impl Handler for Mon {
        fn started(&mut self, cx: &mut Context<'_>, _: Vec<Value>) -> Flow {
            for t in &self.targets {
                cx.monitor(*t).unwrap();
            }
            self.tx.send(Event::Message(Message { from: cx.pid(), topic: "ready".into(), payload: Payload::new() })).unwrap();
            Flow::Continue
        }
        fn handle(&mut self, _: &mut Context<'_>, ev: Event) -> Flow {
            self.tx.send(ev).unwrap();
            Flow::Continue
        }
    }
    assert!(matches!(next(&mrx), Event::Message(m) if m.topic == "ready" && m.from == monitor));
    node.send(chain[0], "crash", payload![]).unwrap();
    let mut exits = std::collections::HashMap::new();
    for _ in 0..10 {
        let (from, r) = exit_of(next(&mrx));
        exits.insert(from, r.unwrap_err().message);
    }
    assert_eq!(exits[&chain[0]], "crashed on purpose");
    for p in &chain[1..] {
        assert_eq!(exits[p], "linked process failed", "{p}");
    }
    assert!(chain.iter().all(|p| !node.is_alive(*p)));
    assert!(node.is_alive(bystander));
}

#[test]
fn normal_exit_sends_no_link_down_and_trapping_receives_link_down() {
    let node = node(2);
    // A trapping parent linked to two children: one exits normally, one abnormally.
    let (parent, rx, _) = parent_spawning(&node, |cx| {
        cx.set_trap_links(true);
        cx.spawn(Spawn::process(exits_with(Ok(Value::Nil))).linked()).unwrap();
        cx.spawn(Spawn::process(exits_with(Err(Error::internal("x")))).linked()).unwrap()
    });
    match next(&rx) {
        Event::LinkDown { error, .. } => assert_eq!(error.message, "x"),
        e => panic!("expected LINK_DOWN, got {e:?}"),
    }
    // Nothing else arrives (the normal exit was silent): prove it with a marker message.
    node.send(parent, "marker", payload![]).unwrap();
    assert!(matches!(next(&rx), Event::Message(m) if m.topic == "marker"));
    assert!(node.is_alive(parent));
}

#[test]
fn unlinked_peer_hears_nothing() {
    let node = node(1);
    let (parent, rx, child) = parent_spawning(&node, |cx| {
        cx.set_trap_links(true);
        cx.spawn(Spawn::process(handler_fn(|_, ev| match ev {
            Event::Message(m) if m.topic == "die" => Flow::fail(Error::internal("x")),
            _ => Flow::Continue,
        })).linked()).unwrap()
    });
    // A second process links to the child and unlinks again; it must hear nothing when
    // the child fails, while the still-linked parent gets LINK_DOWN.
    let (tx, trx) = channel();
    let p = node.spawn(HOST, Spawn::process(handler_fn(move |cx, ev| {
        if let Event::Message(m) = &ev {
            if m.topic == "link" { cx.link(child).unwrap(); cx.unlink(child).unwrap(); cx.set_trap_links(true); tx.send(()).unwrap(); }
        }
        if let Event::LinkDown { .. } = ev { panic!("unlinked process got LINK_DOWN") }
        Flow::Continue
    }))).unwrap();
    node.send(p, "link", payload![]).unwrap();
    trx.recv_timeout(LIMIT).unwrap();
    node.send(child, "die", payload![]).unwrap();
    assert!(matches!(next(&rx), Event::LinkDown { .. }));
    node.send(parent, "marker", payload![]).unwrap();
    assert!(matches!(next(&rx), Event::Message(m) if m.topic == "marker"));
    assert!(node.is_alive(p), "the unlinked process must survive");
}

#[test]
fn monitor_of_dead_pid_is_an_error_and_unmonitor_stops_exit() {
    let node = node(1);
    let (dead, w) = node.spawn_watched(HOST, Spawn::process(exits_with(Ok(Value::Nil)))).unwrap();
    w.wait().unwrap();
    let (target, trx) = probe(&node, HOST);
    started(&trx);
    let (tx, rx) = channel();
    let p = node.spawn(HOST, Spawn::process(handler_fn(move |cx, ev| {
        match ev {
            Event::Message(m) if m.topic == "go" => {
                let e = cx.monitor(dead).unwrap_err();
                tx.send(format!("dead:{}", e.kind)).unwrap();
                cx.monitor(target).unwrap();
                cx.unmonitor(target).unwrap();
                tx.send("ok".into()).unwrap();
            }
            Event::Exit { .. } => tx.send("exit".into()).unwrap(),
            Event::Message(m) if m.topic == "marker" => tx.send("marker".into()).unwrap(),
            _ => {}
        }
        Flow::Continue
    }))).unwrap();
    node.send(p, "go", payload![]).unwrap();
    assert_eq!(rx.recv_timeout(LIMIT).unwrap(), "dead:NotFound");
    assert_eq!(rx.recv_timeout(LIMIT).unwrap(), "ok");
    let tw = node.watch(target).unwrap();
    node.send(target, "stop", payload![]).unwrap();
    tw.wait_timeout(LIMIT).expect("target did not stop").unwrap();
    node.send(p, "marker", payload![]).unwrap();
    assert_eq!(rx.recv_timeout(LIMIT).unwrap(), "marker", "no EXIT after unmonitor");
}

#[test]
fn cancel_is_an_event_and_terminate_ends_the_process() {
    let node = node(1);
    let (target, rx) = probe(&node, HOST);
    started(&rx);
    node.cancel(target, "please").unwrap();
    match next(&rx) {
        Event::Cancel { from, reason, .. } => {
            assert!(from.is_nobody());
            assert_eq!(reason, "please");
        }
        e => panic!("{e:?}"),
    }
    assert!(node.is_alive(target), "cancel is cooperative");
    let tw = node.watch(target).unwrap();
    let (terminator, w) = node.spawn_watched(HOST, Spawn::process(handler_fn(move |cx, _| {
        cx.terminate(target).unwrap();
        Flow::stop(())
    }))).unwrap();
    node.send(terminator, "go", payload![]).unwrap();
    w.wait().unwrap();
    // The target ends with "process terminated" (abnormal).
    let e = tw.wait_timeout(LIMIT).expect("target still alive").unwrap_err();
    assert_eq!(e.message, "process terminated");
    assert!(!node.is_alive(target));
}

#[test]
fn terminate_result_is_process_terminated_and_not_catchable() {
    let node = node(1);
    // A process that ignores CANCEL and would never exit on its own.
    let (pid, w) = node.spawn_watched(HOST, Spawn::process(idle())).unwrap();
    node.terminate(pid).unwrap();
    let e = w.wait().unwrap_err();
    assert_eq!(e.message, "process terminated");
    assert_eq!(e.retryable, Some(false));
    assert_eq!(node.terminate(pid).unwrap_err().kind, ErrorKind::NotFound);
}

#[test]
fn exec_returns_the_result() {
    let node = node(2);
    let e = node.exec(HOST, Spawn::process(handler_fn_args())).unwrap_err();
    assert_eq!(e.message, "unknown method main", "the default method is main");
    fn handler_fn_args() -> impl Process {
        struct Sum;
        impl Process for Sum {
            fn init(&mut self, _: &mut Context<'_>, method: &str, args: Vec<Value>) -> Status {
                if method != "compute" {
                    return Status::Exit(Err(Error::invalid(format!("unknown method {method}"))));
                }
                Status::Exit(Ok(Value::Int(args.iter().filter_map(Value::as_int).sum())))
            }
            fn step(&mut self, _: &mut Context<'_>, _: &mut Events<'_>) -> Status { unreachable!() }
        }
        Sum
    }
    // method and args reach init
    let r = node.exec(HOST, Spawn::process(handler_fn_args()).method("compute").args(vec![1.into(), 2.into(), 3.into()]));
    assert_eq!(r.unwrap(), Value::Int(6));
}

#[test]
fn names_follow_the_rules_and_are_released_at_exit() {
    let node = node(1);
    let (a, arx) = probe(&node, HOST);
    started(&arx);
    let (b, brx) = probe(&node, HOST);
    started(&brx);
    node.register("svc", a).unwrap();
    node.register("svc", a).unwrap(); // same name, same PID: fine
    node.register("svc2", a).unwrap(); // several names per process
    let e = node.register("svc", b).unwrap_err();
    assert_eq!(e.kind, ErrorKind::AlreadyExists);
    assert_eq!(node.lookup("svc"), Some(a));
    // unregister: true once, false after
    let (tx, rx) = channel();
    let p = node.spawn(HOST, Spawn::process(handler_fn(move |cx, _| {
        let first = cx.unregister("svc2").unwrap();
        let second = cx.unregister("svc2").unwrap();
        tx.send((first, second)).unwrap();
        Flow::stop(())
    }))).unwrap();
    node.send(p, "go", payload![]).unwrap();
    assert_eq!(rx.recv_timeout(LIMIT).unwrap(), (true, false));
    assert_eq!(node.lookup("svc2"), None);
    // exit releases
    let aw = node.watch(a).unwrap();
    node.send(a, "stop", payload![]).unwrap();
    aw.wait_timeout(LIMIT).expect("a did not stop").unwrap();
    assert_eq!(node.lookup("svc"), None, "name not released at exit");
    node.register("svc", b).unwrap();
    // registering for a dead PID fails
    assert_eq!(node.register("x", a).unwrap_err().kind, ErrorKind::NotFound);
}

#[test]
fn exit_fan_out_order_table_names_monitors() {
    // When the monitor's EXIT arrives, the PID is already out of the table and its name free.
    let node = node(2);
    let (tx, rx) = channel();
    let h = node.handle();
    let _m = node.spawn(HOST, Spawn::process(HandlerProcess(Checker { tx, node: h }))).unwrap();
    struct Checker { tx: std::sync::mpsc::Sender<(bool, bool)>, node: NodeRef }
    impl Handler for Checker {
        fn started(&mut self, cx: &mut Context<'_>, _: Vec<Value>) -> Flow {
            let c = cx.spawn(Spawn::process(handler_fn(|_, _| Flow::stop(()))).monitored()).unwrap();
            cx.register_for("named-child", c).unwrap();
            cx.send(c, "go", payload![]).unwrap();
            Flow::Continue
        }
        fn handle(&mut self, cx: &mut Context<'_>, ev: Event) -> Flow {
            if let Event::Exit { from, .. } = ev {
                let alive = self.node.is_alive(from);
                let named = cx.lookup("named-child").is_some();
                self.tx.send((alive, named)).unwrap();
            }
            Flow::Continue
        }
    }
    assert_eq!(rx.recv_timeout(LIMIT).unwrap(), (false, false));
}

#[test]
fn max_processes_is_enforced_with_a_clear_error() {
    let node = Node::new().unwrap();
    node.add_host(HostConfig::new("small").workers(1).max_processes(2).stop_timeout(std::time::Duration::from_millis(100))).unwrap();
    let a = node.spawn("small", Spawn::process(idle())).unwrap();
    let _b = node.spawn("small", Spawn::process(idle())).unwrap();
    let e = node.spawn("small", Spawn::process(idle())).unwrap_err();
    assert_eq!(e.kind, ErrorKind::LimitExceeded);
    assert_eq!(e.message, "host 'small' is at max_processes (2)");
    // room again after one exits
    let aw = node.watch(a).unwrap();
    node.terminate(a).unwrap();
    aw.wait_timeout(LIMIT).expect("a did not end").unwrap_err();
    node.spawn("small", Spawn::process(idle())).expect("room after an exit");
    assert_eq!(node.spawn("nope", Spawn::process(idle())).unwrap_err().kind, ErrorKind::NotFound);
}

#[test]
fn entries_spawn_through_factories() {
    let node = node(1);
    node.register_entry("app:adder", std::sync::Arc::new(|_id: &str| -> Result<Box<dyn Process>, Error> {
        Ok(Box::new(exits_with(Ok(Value::Int(5)))))
    }));
    assert_eq!(node.exec(HOST, Spawn::entry("app:adder")).unwrap(), Value::Int(5));
    let e = node.spawn(HOST, Spawn::entry("app:missing")).unwrap_err();
    assert_eq!((e.kind, e.message.as_str()), (ErrorKind::NotFound, "entry not found: app:missing"));
}

#[test]
fn messages_sent_before_exit_arrive_before_the_exit_event() {
    // The child sends 1,000 messages (several send batches) to its monitoring parent and
    // exits in the same step: all of them must come before the EXIT, in order.
    let node = node(2);
    for _ in 0..20 {
        let (_p, rx, child) = parent_spawning(&node, |cx| {
            let parent = cx.pid();
            cx.spawn(Spawn::process(handler_fn(move |cx, _| {
                for i in 0..1000 {
                    cx.send1(parent, "n", i).unwrap();
                }
                Flow::stop(())
            })).monitored()).unwrap()
        });
        node.send(child, "go", payload![]).unwrap();
        for i in 0..1000 {
            match next(&rx) {
                Event::Message(m) => assert_eq!(m.first(), &Value::Int(i)),
                e => panic!("expected message {i}, got {e:?}"),
            }
        }
        let (from, r) = exit_of(next(&rx));
        assert_eq!(from, child);
        r.unwrap();
    }
}
