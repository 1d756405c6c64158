//! Test helpers: a node with hosts, and a probe process that forwards what it receives.
#![allow(dead_code)]

use std::sync::mpsc::{channel, Receiver, Sender};
use std::time::Duration;

use wippy_runtime::*;

/// Upper bound for anything a test waits for. Never a synchronisation device.
pub const LIMIT: Duration = Duration::from_secs(20);

pub const HOST: &str = "app:processes";

pub fn node(workers: usize) -> Node {
    let node = Node::new().unwrap();
    node.add_host(HostConfig::new(HOST).workers(workers).stop_timeout(Duration::from_millis(100))).unwrap();
    node
}

/// A process that forwards every event to the returned channel. It exits normally on the
/// topic "stop", and abnormally (with the payload as message) on "fail".
pub fn probe(node: &NodeRef, host: &str) -> (Pid, Receiver<Event>) {
    probe_with(node, host, |_| {})
}

pub fn probe_with(
    node: &NodeRef,
    host: &str,
    setup: impl FnOnce(&mut Context<'_>) + Send + 'static,
) -> (Pid, Receiver<Event>) {
    let (tx, rx) = channel();
    let pid = node.spawn(host, Spawn::process(HandlerProcess(Probe { tx, setup: Some(Box::new(setup)) }))).unwrap();
    (pid, rx)
}

type Setup = Box<dyn FnOnce(&mut Context<'_>) + Send>;

struct Probe {
    tx: Sender<Event>,
    setup: Option<Setup>,
}

impl Handler for Probe {
    fn started(&mut self, cx: &mut Context<'_>, _args: Vec<Value>) -> Flow {
        if let Some(s) = self.setup.take() {
            s(cx);
        }
        let _ = self.tx.send(Event::Message(Message { from: cx.pid(), topic: "@started".into(), payload: Payload::new() }));
        Flow::Continue
    }
    fn handle(&mut self, _cx: &mut Context<'_>, ev: Event) -> Flow {
        let flow = match &ev {
            Event::Message(m) if m.topic == "stop" => Flow::stop(()),
            Event::Cancel { reason, .. } if reason == "scheduler shutdown" => Flow::stop(()),
            Event::Message(m) if m.topic == "fail" => {
                Flow::fail(Error::internal(m.first().as_str().unwrap_or("failed").to_string()))
            }
            _ => Flow::Continue,
        };
        let _ = self.tx.send(ev);
        flow
    }
}

/// Wait for the probe's start notification.
pub fn started(rx: &Receiver<Event>) {
    match rx.recv_timeout(LIMIT).expect("probe did not start") {
        Event::Message(m) if m.topic == "@started" => {}
        other => panic!("expected start, got {other:?}"),
    }
}

pub fn next(rx: &Receiver<Event>) -> Event {
    rx.recv_timeout(LIMIT).expect("no event within the limit")
}

/// A process that exits at once with `result`.
pub fn exits_with(result: ExitResult) -> impl Process {
    struct Once(Option<ExitResult>);
    impl Process for Once {
        fn init(&mut self, _: &mut Context<'_>, _: &str, _: Vec<Value>) -> Status {
            Status::Exit(self.0.take().unwrap())
        }
        fn step(&mut self, _: &mut Context<'_>, _: &mut Events<'_>) -> Status {
            unreachable!()
        }
    }
    Once(Some(result))
}

/// A process that computes forever, yielding only when its budget is spent.
pub struct Spinner;
impl Process for Spinner {
    fn init(&mut self, _: &mut Context<'_>, _: &str, _: Vec<Value>) -> Status {
        Status::Yield
    }
    fn step(&mut self, cx: &mut Context<'_>, _: &mut Events<'_>) -> Status {
        let mut x = 0u64;
        while cx.consume(1) {
            for i in 0..100 {
                x = x.wrapping_mul(31).wrapping_add(i);
            }
            std::hint::black_box(x);
        }
        Status::Yield
    }
}

/// A process that waits for messages and ignores them, but stops on any CANCEL.
pub fn idle() -> impl Process {
    handler_fn(|_, ev| match ev {
        Event::Cancel { .. } => Flow::stop(()),
        _ => Flow::Continue,
    })
}
