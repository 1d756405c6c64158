//! Stopping hosts and nodes: CANCEL, stop timeout, terminate, no leaked threads.
mod common;
use common::*;
use std::sync::mpsc::channel;
use std::time::Duration;
use wippy_runtime::*;

#[test]
fn stop_host_cancels_waits_then_terminates_survivors() {
    let node = Node::new().unwrap();
    node.add_host(HostConfig::new("h").workers(2).stop_timeout(Duration::from_millis(100))).unwrap();
    // A cooperative process reports the CANCEL it got and exits.
    let (tx, rx) = channel();
    let coop = node
        .spawn("h", Spawn::process(handler_fn(move |_, ev| match ev {
            Event::Cancel { from, reason, .. } => {
                tx.send((from, reason.to_string())).unwrap();
                Flow::stop(())
            }
            _ => Flow::Continue,
        })))
        .unwrap();
    // A stubborn one ignores it.
    let stubborn = node.spawn("h", Spawn::process(handler_fn(|_, _| Flow::Continue))).unwrap();
    let sw = node.watch(stubborn).unwrap();
    let cw = node.watch(coop).unwrap();
    let report = node.stop_host("h").unwrap();
    assert_eq!(report, StopReport { canceled: 2, terminated: 1, stuck: 0 });
    assert_eq!(rx.recv_timeout(LIMIT).unwrap(), (Pid::NOBODY, "scheduler shutdown".to_string()));
    cw.wait_timeout(LIMIT).unwrap().unwrap();
    assert_eq!(sw.wait_timeout(LIMIT).unwrap().unwrap_err().message, "process terminated");
    assert_eq!(node.process_count(), 0);
    assert!(node.host("h").is_none());
}

#[test]
fn a_spawn_onto_a_stopping_or_stopped_host_says_which() {
    // SPEC §4.2 / §12.12: Unavailable "host is shutting down" while it stops, "host is not
    // running" once stopped (a host the embedder declared); an unknown host stays NotFound
    let node = Node::new().unwrap();
    node.declare_host("h");
    node.add_host(HostConfig::new("h").workers(1).stop_timeout(Duration::from_secs(5))).unwrap();
    let (tx, rx) = channel();
    node.spawn(
        "h",
        Spawn::process(handler_fn(move |cx, ev| match ev {
            Event::Cancel { .. } => {
                let e = cx.spawn(Spawn::process(handler_fn(|_, _| Flow::Continue))).unwrap_err();
                tx.send((e.kind, e.message)).unwrap();
                Flow::stop(())
            }
            _ => Flow::Continue,
        })),
    )
    .unwrap();
    node.stop_host("h").unwrap();
    assert_eq!(rx.recv_timeout(LIMIT).unwrap(), (ErrorKind::Unavailable, "host is shutting down: h".to_string()));
    let e = node.spawn("h", Spawn::process(handler_fn(|_, _| Flow::Continue))).unwrap_err();
    assert_eq!((e.kind, e.message.as_str()), (ErrorKind::Unavailable, "host is not running: h"));
    let e = node.spawn("nope", Spawn::process(handler_fn(|_, _| Flow::Continue))).unwrap_err();
    assert_eq!(e.kind, ErrorKind::NotFound);
}
