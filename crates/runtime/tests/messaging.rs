//! Sends: routing by PID and name, ordering, wake-ups under concurrency, errors.
mod common;
use common::*;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use wippy_runtime::*;

#[test]
fn message_carries_topic_payload_and_sender() {
    let node = node(2);
    let (pid, rx) = probe(&node, HOST);
    started(&rx);
    let sender = node
        .spawn(HOST, Spawn::process(handler_fn(move |cx, _| {
            cx.send(pid, "greet", payload![1, "two", 3.5]).unwrap();
            Flow::stop(())
        })))
        .unwrap();
    node.send(sender, "go", payload![]).unwrap();
    match next(&rx) {
        Event::Message(m) => {
            assert_eq!(m.topic, "greet");
            assert_eq!(m.from, sender);
            assert_eq!(m.payload.as_slice(), &[Value::Int(1), Value::str("two"), Value::Float(3.5)]);
        }
        e => panic!("{e:?}"),
    }
}

#[test]
fn outside_sender_is_nobody() {
    let node = node(1);
    let (pid, rx) = probe(&node, HOST);
    started(&rx);
    node.send(pid, "t", payload![]).unwrap();
    match next(&rx) {
        Event::Message(m) => assert!(m.from.is_nobody()),
        e => panic!("{e:?}"),
    }
}

#[test]
fn per_sender_fifo_and_nothing_lost_under_concurrent_senders() {
    const SENDERS: u64 = 16;
    const EACH: u64 = 5_000;
    let node = node(2);
    let (tx, rx) = std::sync::mpsc::channel();
    // The receiver checks each sender's sequence numbers arrive in order, and counts.
    let receiver = node
        .spawn(HOST, Spawn::process(handler_fn({
            let mut last = std::collections::HashMap::<Pid, i64>::new();
            let mut total = 0u64;
            move |_cx, ev| {
                if let Event::Message(m) = ev {
                    let seq = m.first().as_int().unwrap();
                    let prev = last.insert(m.from, seq).unwrap_or(-1);
                    assert_eq!(seq, prev + 1, "out of order from {}", m.from);
                    total += 1;
                    if total == SENDERS * EACH {
                        tx.send(total).unwrap();
                        return Flow::stop(());
                    }
                }
                Flow::Continue
            }
        })))
        .unwrap();
    for _ in 0..SENDERS {
        let s = node
            .spawn(HOST, Spawn::process(handler_fn(move |cx, _| {
                for i in 0..EACH as i64 {
                    cx.send1(receiver, "n", i).unwrap();
                }
                Flow::stop(())
            })))
            .unwrap();
        node.send(s, "go", payload![]).unwrap();
    }
    assert_eq!(rx.recv_timeout(LIMIT).unwrap(), SENDERS * EACH);
}

#[test]
fn no_lost_wakeup_with_outside_threads_racing_the_receiver() {
    // Many OS threads send while the receiver keeps parking: every message must be seen.
    let node = node(2);
    let count = Arc::new(AtomicU64::new(0));
    let (tx, rx) = std::sync::mpsc::channel();
    let c = count.clone();
    let receiver = node
        .spawn(HOST, Spawn::process(handler_fn(move |_cx, ev| {
            if let Event::Message(_) = ev {
                if c.fetch_add(1, Ordering::Relaxed) + 1 == 4 * 20_000 {
                    tx.send(()).unwrap();
                }
            }
            Flow::Continue
        })))
        .unwrap();
    let threads: Vec<_> = (0..4)
        .map(|_| {
            let n = node.handle();
            std::thread::spawn(move || {
                for i in 0..20_000 {
                    n.send(receiver, "x", payload![i]).unwrap();
                    if i % 64 == 0 {
                        std::thread::yield_now();
                    }
                }
            })
        })
        .collect();
    for t in threads {
        t.join().unwrap();
    }
    rx.recv_timeout(LIMIT).expect("messages lost: receiver never saw them all");
    assert_eq!(count.load(Ordering::Relaxed), 80_000);
}

#[test]
fn sending_to_a_dead_pid_is_not_found() {
    let node = node(1);
    let (pid, w) = node.spawn_watched(HOST, Spawn::process(exits_with(Ok(Value::Nil)))).unwrap();
    w.wait().unwrap();
    let e = node.send(pid, "t", payload![]).unwrap_err();
    assert_eq!(e.kind, ErrorKind::NotFound);
    assert!(e.message.contains("process not found"), "{e}");
    // A PID that never existed, too.
    let ghost: Pid = "{app:processes|0xfffffff}".parse().unwrap();
    assert_eq!(node.send(ghost, "t", payload![]).unwrap_err().kind, ErrorKind::NotFound);
}

#[test]
fn a_malformed_pid_is_invalid_from_every_path() {
    // one reading of a destination (Dest::parse): `{...` is a PID or an error, never a name
    let node = node(1);
    let e = node.send("{app:processes|0xzz}", "t", payload![]).unwrap_err();
    assert_eq!(e.kind, ErrorKind::Invalid, "{e}");
    assert_eq!(Dest::parse("{app:processes|0xzz}").unwrap_err().to_string(), e.message);
    assert_eq!(Dest::parse("kv"), Ok(Dest::Name("kv".into())));
    assert!(matches!(Dest::parse("{app:processes|0x1}"), Ok(Dest::Pid(_))));
    assert_eq!(node.send("no-such-name", "t", payload![]).unwrap_err().kind, ErrorKind::NotFound);
}

#[test]
fn names_route_sends_and_unknown_names_are_not_found() {
    let node = node(1);
    let (pid, rx) = probe_with(&node, HOST, |cx| cx.register("kv").unwrap());
    started(&rx);
    assert_eq!(node.lookup("kv"), Some(pid));
    node.send("kv", "get", payload!["k"]).unwrap();
    assert!(matches!(next(&rx), Event::Message(m) if m.topic == "get"));
    // A PID in string form is a PID, not a name.
    node.send(pid.to_string(), "direct", payload![]).unwrap();
    assert!(matches!(next(&rx), Event::Message(m) if m.topic == "direct"));
    let e = node.send("nobody-here", "t", payload![]).unwrap_err();
    assert_eq!(e.kind, ErrorKind::NotFound);
    assert!(e.message.contains("nobody-here"), "{e}");
}

#[test]
fn reserved_topics_are_invalid() {
    let node = node(1);
    let (pid, rx) = probe(&node, HOST);
    started(&rx);
    let e = node.send(pid, "@internal", payload![]).unwrap_err();
    assert_eq!(e.kind, ErrorKind::Invalid);
    assert!(e.message.contains("@internal"));
    assert!(rx.try_recv().is_err(), "nothing may be delivered");
}

#[test]
fn payload_values_survive_intact() {
    let node = node(1);
    let (pid, rx) = probe(&node, HOST);
    started(&rx);
    let mut inner = Table::new();
    inner.push(Value::bytes(&[0, 1, 255]));
    inner.set("i", i64::MAX);
    let mut t = Table::new();
    t.set("nested", inner);
    t.set(7, Value::from(Error::not_found("gone").with_retryable(true)));
    node.send(pid, "v", payload![Value::table(t.clone())]).unwrap();
    match next(&rx) {
        Event::Message(m) => assert_eq!(m.first(), &Value::table(t)),
        e => panic!("{e:?}"),
    }
}
