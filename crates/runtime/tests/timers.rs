//! Timers, tickers and futures through dispatch; their cancellation.
mod common;
use common::*;
use std::sync::mpsc::channel;
use std::time::{Duration, Instant};
use wippy_runtime::*;

/// A process that starts a timer in init and exits with the completion time.
struct Sleeper(Duration);
impl Process for Sleeper {
    fn init(&mut self, cx: &mut Context<'_>, _: &str, _: Vec<Value>) -> Status {
        cx.command(Command::After(self.0));
        Status::Block
    }
    fn step(&mut self, _: &mut Context<'_>, ev: &mut Events<'_>) -> Status {
        match ev.next() {
            Some(Event::Completion { result, .. }) => Status::Exit(result),
            _ => Status::Block,
        }
    }
}

#[test]
fn a_sleep_blocks_then_completes_with_the_time() {
    let node = node(1);
    let t0 = Instant::now();
    let before = unix_nanos();
    let v = node.exec(HOST, Spawn::process(Sleeper(Duration::from_millis(20)))).unwrap();
    assert!(t0.elapsed() >= Duration::from_millis(20));
    assert!(v.as_int().unwrap() >= before + 20_000_000);
}

#[test]
fn ten_thousand_concurrent_timers() {
    let node = node(2);
    let watches: Vec<_> = (0..10_000u64)
        .map(|i| node.spawn_watched(HOST, Spawn::process(Sleeper(Duration::from_millis(10 + i % 20)))).unwrap().1)
        .collect();
    for w in watches {
        w.wait_timeout(LIMIT).expect("timer never fired").unwrap();
    }
    assert_eq!(node.process_count(), 0);
}

#[test]
fn ticker_ticks_until_cancelled_and_a_cancelled_timer_never_fires() {
    let node = node(1);
    let (tx, rx) = channel();
    let p = node
        .spawn(HOST, Spawn::process(HandlerProcess(Ticks { tx, ticks: 0, ticker: None, timer: None })))
        .unwrap();
    struct Ticks {
        tx: std::sync::mpsc::Sender<String>,
        ticks: u32,
        ticker: Option<CommandId>,
        timer: Option<CommandId>,
    }
    impl Handler for Ticks {
        fn started(&mut self, cx: &mut Context<'_>, _: Vec<Value>) -> Flow {
            self.ticker = Some(cx.command(Command::Ticker(Duration::from_millis(2))));
            let t = cx.command(Command::After(Duration::from_millis(1)));
            assert!(cx.cancel_command(t), "pending timer cancels");
            assert!(!cx.cancel_command(t), "second cancel finds nothing");
            Flow::Continue
        }
        fn handle(&mut self, cx: &mut Context<'_>, ev: Event) -> Flow {
            match ev {
                Event::Completion { id, .. } if Some(id) == self.ticker => {
                    self.ticks += 1;
                    if self.ticks == 5 {
                        assert!(cx.cancel_command(id));
                        // a fresh timer proves no further tick is queued behind
                        self.timer = Some(cx.command(Command::After(Duration::from_millis(20))));
                    }
                }
                Event::Completion { id, .. } if Some(id) == self.timer => {
                    self.tx.send(format!("ticks={}", self.ticks)).unwrap();
                }
                Event::Completion { id, .. } => panic!("unexpected completion {id:?}"),
                _ => {}
            }
            Flow::Continue
        }
    }
    assert_eq!(rx.recv_timeout(LIMIT).unwrap(), "ticks=5");
    node.terminate(p).unwrap();
}

#[test]
fn timers_of_an_exited_process_are_cancelled() {
    // A process that starts a fast ticker, then exits: the ticker task must stop, which
    // the node proves by shutting its dispatch runtime down promptly with nothing pending.
    let node = node(1);
    struct Leaver;
    impl Process for Leaver {
        fn init(&mut self, cx: &mut Context<'_>, _: &str, _: Vec<Value>) -> Status {
            cx.command(Command::Ticker(Duration::from_millis(1)));
            cx.command(Command::After(Duration::from_secs(3600)));
            Status::Exit(Ok(Value::Nil))
        }
        fn step(&mut self, _: &mut Context<'_>, _: &mut Events<'_>) -> Status {
            unreachable!()
        }
    }
    for _ in 0..100 {
        node.exec(HOST, Spawn::process(Leaver)).unwrap();
    }
    let h = node.tokio_handle();
    let (tx, rx) = channel();
    h.spawn(async move {
        // Let any surviving ticker fire a few times, then count live tasks.
        tokio::time::sleep(Duration::from_millis(20)).await;
        let m = tokio::runtime::Handle::current().metrics();
        let _ = tx.send(m.num_alive_tasks());
    });
    assert_eq!(rx.recv_timeout(LIMIT).unwrap(), 1, "only the probe task itself may be alive");
}

#[test]
fn task_commands_run_futures_on_dispatch() {
    let node = node(1);
    struct Fut(Vec<(u64, Result<Value, Error>)>);
    impl Process for Fut {
        fn init(&mut self, cx: &mut Context<'_>, _: &str, _: Vec<Value>) -> Status {
            cx.command(Command::Task(Box::pin(async { Ok(Value::str("done")) })));
            cx.command(Command::Task(Box::pin(async { Err(Error::new(ErrorKind::Timeout, "slow")) })));
            Status::Block
        }
        fn step(&mut self, _: &mut Context<'_>, ev: &mut Events<'_>) -> Status {
            while let Some(Event::Completion { id, result }) = ev.next() {
                self.0.push((id.0, result));
            }
            if self.0.len() < 2 {
                return Status::Block;
            }
            self.0.sort_by_key(|g| g.0);
            assert_eq!(self.0[0].1.as_ref().unwrap(), &Value::str("done"));
            assert_eq!(self.0[1].1.as_ref().unwrap_err().kind, ErrorKind::Timeout);
            Status::Exit(Ok(Value::Bool(true)))
        }
    }
    assert_eq!(node.exec(HOST, Spawn::process(Fut(Vec::new()))).unwrap(), Value::Bool(true));
}
