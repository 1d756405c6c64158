//! Services: restart delays driven by a hand-moved clock (so a test of 1s, 2s, 4s… takes
//! milliseconds), the stable-run reset, max_attempts, no restart after a normal exit or a
//! non-retryable error, diamond start order, reverse stop order, cycles, a process that
//! ignores CANCEL, and no overlap between an old instance and its replacement.
mod common;

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use common::*;
use parking_lot::{Condvar, Mutex};
use wippy_runtime::*;

/// A clock moved by the test. `after` records the delay and fires when the clock passes it.
#[derive(Default)]
struct ManualClock {
    state: Mutex<ClockState>,
    changed: Condvar,
}

#[derive(Default)]
struct ClockState {
    now: Duration,
    timers: Vec<(Duration, Box<dyn FnOnce() + Send>)>,
    requested: Vec<Duration>,
}

impl Clock for ManualClock {
    fn now(&self) -> Duration {
        self.state.lock().now
    }
    fn after(&self, delay: Duration, fire: Box<dyn FnOnce() + Send>) {
        let mut s = self.state.lock();
        let due = s.now + delay;
        s.timers.push((due, fire));
        s.requested.push(delay);
        self.changed.notify_all();
    }
    fn random(&self) -> f64 {
        0.0
    }
}

impl ManualClock {
    fn advance(&self, d: Duration) {
        let due: Vec<Box<dyn FnOnce() + Send>> = {
            let mut s = self.state.lock();
            s.now += d;
            let now = s.now;
            let (fire, keep): (Vec<_>, Vec<_>) = std::mem::take(&mut s.timers).into_iter().partition(|(at, _)| *at <= now);
            s.timers = keep;
            fire.into_iter().map(|(_, f)| f).collect()
        };
        for f in due {
            f();
        }
    }
    /// Wait until `n` delays have been asked for (upper bound: LIMIT).
    fn requested(&self, n: usize) -> Vec<Duration> {
        let mut s = self.state.lock();
        let deadline = std::time::Instant::now() + LIMIT;
        while s.requested.len() < n {
            if self.changed.wait_until(&mut s, deadline).timed_out() {
                panic!("only {} restart delays requested, expected {n}: {:?}", s.requested.len(), s.requested);
            }
        }
        s.requested.clone()
    }
}

/// Test process kinds, by entry ID:
/// t:crash fails at once; t:ok exits normally; t:fatal fails with retryable=false;
/// t:idle runs until CANCEL (or fails on the message "fail"); t:stubborn ignores CANCEL.
fn test_node() -> Node {
    let node = node(2);
    node.register_entry(
        "t:crash",
        Arc::new(|_: &str| -> Result<Box<dyn Process>, Error> {
            Ok(Box::new(HandlerProcess(Starter(|| Flow::fail(Error::internal("crash"))))))
        }),
    );
    node.register_entry(
        "t:ok",
        Arc::new(|_: &str| -> Result<Box<dyn Process>, Error> { Ok(Box::new(HandlerProcess(Starter(|| Flow::stop(1))))) }),
    );
    node.register_entry(
        "t:fatal",
        Arc::new(|_: &str| -> Result<Box<dyn Process>, Error> {
            Ok(Box::new(HandlerProcess(Starter(|| Flow::fail(Error::invalid("bad config").with_retryable(false))))))
        }),
    );
    node.register_entry(
        "t:idle",
        Arc::new(|_: &str| -> Result<Box<dyn Process>, Error> {
            Ok(Box::new(handler_fn(|_, ev| match ev {
                Event::Cancel { .. } => Flow::stop("cancelled"),
                Event::Message(m) if m.topic.as_str() == "fail" => Flow::fail(Error::internal("asked to fail")),
                _ => Flow::Continue,
            })))
        }),
    );
    node.register_entry("t:stubborn", Arc::new(|_: &str| -> Result<Box<dyn Process>, Error> { Ok(Box::new(handler_fn(|_, _| Flow::Continue))) }));
    node
}

struct Starter<F>(F);
impl<F: FnMut() -> Flow + Send + 'static> Handler for Starter<F> {
    fn started(&mut self, _: &mut Context<'_>, _: Vec<Value>) -> Flow {
        (self.0)()
    }
    fn handle(&mut self, _: &mut Context<'_>, _: Event) -> Flow {
        Flow::Continue
    }
}

fn process(id: &str, entry: &str, requires: &[&str], restart: RestartPolicy) -> ServiceSpec {
    ServiceSpec {
        id: id.into(),
        kind: ServiceKind::Process { host: HOST.into(), entry: entry.into(), args: vec![], context: None, identity: None },
        requires: requires.iter().map(|s| s.to_string()).collect(),
        auto_start: true,
        stop_timeout: Duration::from_secs(5),
        restart,
    }
}

fn policy(max_attempts: u32) -> RestartPolicy {
    RestartPolicy { jitter: 0.0, max_attempts, ..RestartPolicy::default() }
}

fn secs(v: &[u64]) -> Vec<Duration> {
    v.iter().map(|s| Duration::from_secs(*s)).collect()
}

fn states(sup: &Supervisor, id: &str) -> Vec<ServiceState> {
    sup.history().into_iter().filter(|t| t.service == id).map(|t| t.state).collect()
}

#[test]
fn restart_delays_grow_exponentially_up_to_max_delay() {
    let node = test_node();
    let clock = Arc::new(ManualClock::default());
    let p = RestartPolicy { max_delay: Duration::from_secs(20), ..policy(0) };
    let sup = Supervisor::new(node.handle(), vec![process("a:svc", "t:crash", &[], p)], clock.clone()).unwrap();
    sup.start_auto();
    for n in 1..=7 {
        clock.requested(n);
        clock.advance(Duration::from_secs(100));
    }
    assert_eq!(clock.requested(7), secs(&[1, 2, 4, 8, 16, 20, 20]));
    let attempts: Vec<u32> = sup.history().iter().filter(|t| t.state == ServiceState::Starting).map(|t| t.attempt).collect();
    assert_eq!(&attempts[..7], &[1, 2, 3, 4, 5, 6, 7]);
    sup.stop_all();
}

#[test]
fn a_stable_run_resets_the_backoff() {
    let node = test_node();
    let clock = Arc::new(ManualClock::default());
    let sup = Supervisor::new(node.handle(), vec![process("a:svc", "t:idle", &[], policy(0))], clock.clone()).unwrap();
    sup.start_auto();
    let fail_current = |sup: &Supervisor| {
        let pid = sup.status()[0].pid.expect("running");
        node.send(pid, "fail", Payload::new()).unwrap();
    };
    // Two quick failures: 1s, then 2s.
    assert!(sup.wait_settled(LIMIT));
    fail_current(&sup);
    clock.requested(1);
    clock.advance(Duration::from_secs(1));
    assert!(sup.wait_for(LIMIT, |h| h.iter().filter(|t| t.state == ServiceState::Running).count() == 2));
    fail_current(&sup);
    clock.requested(2);
    clock.advance(Duration::from_secs(2));
    assert!(sup.wait_for(LIMIT, |h| h.iter().filter(|t| t.state == ServiceState::Running).count() == 3));
    // This run outlives stable_threshold (5s): its failure counts as the first again.
    clock.advance(Duration::from_secs(6));
    fail_current(&sup);
    assert_eq!(clock.requested(3), secs(&[1, 2, 1]));
    sup.stop_all();
}

#[test]
fn max_attempts_gives_up_and_leaves_the_service_exited() {
    let node = test_node();
    let clock = Arc::new(ManualClock::default());
    let sup = Supervisor::new(node.handle(), vec![process("a:svc", "t:crash", &[], policy(3))], clock.clone()).unwrap();
    sup.start_auto();
    clock.requested(1);
    clock.advance(Duration::from_secs(1));
    clock.requested(2);
    clock.advance(Duration::from_secs(2));
    assert!(sup.wait_for(LIMIT, |h| h.last().is_some_and(|t| t.state == ServiceState::Exited)));
    let s = &sup.status()[0];
    assert_eq!((s.state, s.attempt), (ServiceState::Exited, 3));
    assert!(s.error.as_deref().unwrap().contains("gave up after 3 failed attempts"), "{:?}", s.error);
    assert_eq!(clock.requested(2), secs(&[1, 2]), "no third delay");
}

#[test]
fn normal_exits_and_non_retryable_errors_are_not_restarted() {
    let node = test_node();
    let clock = Arc::new(ManualClock::default());
    let specs = vec![process("a:done", "t:ok", &[], policy(0)), process("a:fatal", "t:fatal", &[], policy(0))];
    let sup = Supervisor::new(node.handle(), specs, clock.clone()).unwrap();
    sup.start_auto();
    assert!(sup.wait_for(LIMIT, |h| h.iter().filter(|t| t.state == ServiceState::Exited).count() == 2));
    use ServiceState::*;
    assert_eq!(states(&sup, "a:done"), [Starting, Running, Exited]);
    assert_eq!(states(&sup, "a:fatal"), [Starting, Running, Exited]);
    let fatal = sup.status().into_iter().find(|s| s.id == "a:fatal").unwrap();
    assert!(fatal.error.unwrap().contains("not retryable"));
    assert!(clock.state.lock().requested.is_empty(), "no restart was scheduled");
}

#[test]
fn a_diamond_starts_in_dependency_order_and_stops_in_reverse() {
    let node = test_node();
    let clock = Arc::new(ManualClock::default());
    let specs = vec![
        process("a:d", "t:idle", &["a:b", "a:c"], policy(0)),
        process("a:c", "t:idle", &["a:a"], policy(0)),
        process("a:b", "t:idle", &["a:a"], policy(0)),
        process("a:a", "t:idle", &[], policy(0)),
    ];
    let sup = Supervisor::new(node.handle(), specs, clock).unwrap();
    sup.start_auto();
    assert!(sup.wait_settled(LIMIT));
    let h = sup.history();
    let at = |id: &str, st: ServiceState| h.iter().position(|t| t.service == id && t.state == st).unwrap();
    use ServiceState::*;
    assert!(at("a:a", Running) < at("a:b", Starting) && at("a:a", Running) < at("a:c", Starting));
    // b and c do not wait for each other: both start before d, which waits for both.
    assert!(at("a:b", Starting) < at("a:d", Starting) && at("a:c", Starting) < at("a:d", Starting));
    assert!(at("a:b", Running) < at("a:d", Starting) && at("a:c", Running) < at("a:d", Starting));

    let summary = sup.stop_all();
    assert_eq!(summary, StopSummary { services_stopped: 4, terminated: 0 });
    let h = sup.history();
    let stopped: Vec<&str> = h.iter().filter(|t| t.state == Stopped).map(|t| t.service.as_str()).collect();
    // reverse dependency order; b and c, which no dependency orders, stop together
    assert_eq!(stopped.len(), 4, "{stopped:?}");
    assert_eq!((stopped[0], stopped[3]), ("a:d", "a:a"), "{stopped:?}");
    let mut middle = [stopped[1], stopped[2]];
    middle.sort();
    assert_eq!(middle, ["a:b", "a:c"], "{stopped:?}");
}

#[test]
fn a_failed_dependency_fails_its_dependents_naming_the_chain() {
    let node = test_node();
    let clock = Arc::new(ManualClock::default());
    let specs = vec![
        process("a:db", "t:no-such-entry", &[], policy(1)),
        process("a:cache", "t:idle", &["a:db"], policy(0)),
        process("a:web", "t:idle", &["a:cache"], policy(0)),
    ];
    let sup = Supervisor::new(node.handle(), specs, clock).unwrap();
    sup.start_auto();
    assert!(sup.wait_for(LIMIT, |h| h.iter().filter(|t| t.state == ServiceState::Exited).count() == 3));
    let web = sup.status().into_iter().find(|s| s.id == "a:web").unwrap();
    assert_eq!(web.error.as_deref(), Some("dependency failed: a:web -> a:cache -> a:db: entry not found: t:no-such-entry (gave up after 1 failed attempts)"));
}

#[test]
fn a_cycle_is_refused() {
    let node = test_node();
    let specs = vec![process("a:x", "t:idle", &["a:y"], policy(0)), process("a:y", "t:idle", &["a:x"], policy(0))];
    let err = Supervisor::new(node.handle(), specs, Arc::new(ManualClock::default())).err().unwrap();
    assert_eq!(err.message, "dependency cycle: a:x -> a:y -> a:x");
}

#[test]
fn a_process_ignoring_cancel_is_terminated_after_stop_timeout() {
    let node = test_node();
    let mut spec = process("a:stubborn", "t:stubborn", &[], policy(0));
    spec.stop_timeout = Duration::from_millis(50);
    let sup = Supervisor::new(node.handle(), vec![spec, process("a:polite", "t:idle", &[], policy(0))], Arc::new(ManualClock::default())).unwrap();
    sup.start_auto();
    assert!(sup.wait_settled(LIMIT));
    let pid = sup.status().into_iter().find(|s| s.id == "a:stubborn").unwrap().pid.unwrap();
    let watch = node.watch(pid).unwrap();
    let summary = sup.stop_all();
    assert_eq!(summary, StopSummary { services_stopped: 2, terminated: 1 });
    assert_eq!(watch.wait_timeout(LIMIT).unwrap().unwrap_err().message, "process terminated");
    assert!(sup.status().iter().all(|s| s.state == ServiceState::Stopped));
}

static LIVE: AtomicUsize = AtomicUsize::new(0);
static MOST: AtomicUsize = AtomicUsize::new(0);
static RUNS: AtomicUsize = AtomicUsize::new(0);

struct Counted;
impl Handler for Counted {
    fn started(&mut self, cx: &mut Context<'_>, _: Vec<Value>) -> Flow {
        let live = LIVE.fetch_add(1, Ordering::SeqCst) + 1;
        MOST.fetch_max(live, Ordering::SeqCst);
        RUNS.fetch_add(1, Ordering::SeqCst);
        // Exit later, through a timer, so each instance spans scheduling points.
        let _ = cx.command(Command::After(Duration::from_millis(1)));
        Flow::Continue
    }
    fn handle(&mut self, _: &mut Context<'_>, _: Event) -> Flow {
        Flow::fail(Error::internal("crash"))
    }
    fn stopped(&mut self, _: &mut Context<'_>, _: &ExitResult) {
        LIVE.fetch_sub(1, Ordering::SeqCst);
    }
}

#[test]
fn a_restarted_instance_never_overlaps_the_old_one() {
    let node = test_node();
    node.register_entry("t:counted", Arc::new(|_: &str| -> Result<Box<dyn Process>, Error> { Ok(Box::new(HandlerProcess(Counted))) }));
    let p = RestartPolicy { initial_delay: Duration::ZERO, max_delay: Duration::ZERO, max_attempts: 50, ..policy(0) };
    let sup = Supervisor::new(node.handle(), vec![process("a:svc", "t:counted", &[], p)], Arc::new(SystemClock::new(&node.handle()))).unwrap();
    sup.start_auto();
    assert!(sup.wait_for(LIMIT, |h| h.last().is_some_and(|t| t.state == ServiceState::Exited)));
    assert_eq!(RUNS.load(Ordering::SeqCst), 50);
    assert_eq!(MOST.load(Ordering::SeqCst), 1, "two instances of the service were alive at once");
}

#[test]
fn delays_follow_the_formula_with_jitter() {
    let p = RestartPolicy { initial_delay: Duration::from_secs(1), max_delay: Duration::from_secs(90), backoff_factor: 2.0, jitter: 0.1, ..RestartPolicy::default() };
    assert_eq!(p.delay(1, 0.0), Duration::from_secs(1));
    assert_eq!(p.delay(4, 0.0), Duration::from_secs(8));
    assert_eq!(p.delay(30, 0.0), Duration::from_secs(90));
    assert_eq!(p.delay(3, 1.0), Duration::from_secs_f64(4.4));
    assert_eq!(p.delay(3, -1.0), Duration::from_secs_f64(3.6));
}

#[test]
fn no_process_can_terminate_cancel_or_link_a_supervisor_agent() {
    // the agent that watches services is the runtime's: a user process that could end it
    // would leave the services unwatched
    let node = test_node();
    let clock = Arc::new(ManualClock::default());
    let sup = Supervisor::new(node.handle(), vec![process("a:svc", "t:idle", &[], policy(0))], clock.clone()).unwrap();
    sup.start_auto();
    assert!(sup.wait_settled(LIMIT));
    let agent: Pid = format!("{{{HOST}|0xf000000000000001}}").parse().unwrap();
    let (tx, rx) = std::sync::mpsc::channel();
    node.spawn(
        HOST,
        Spawn::process(handler_fn(move |cx, ev| {
            if let Event::Message(_) = ev {
                let kinds = [cx.terminate(agent), cx.cancel(agent, "bye"), cx.link(agent)].map(|r| r.map_err(|e| e.kind));
                tx.send(kinds).unwrap();
                return Flow::stop(());
            }
            Flow::Continue
        })),
    )
    .map(|pid| node.send(pid, "go", Payload::new()).unwrap())
    .unwrap();
    let denied = Err(ErrorKind::PermissionDenied);
    assert_eq!(rx.recv_timeout(LIMIT).unwrap(), [denied, denied, denied]);
    // the agent still watches: a failure is restarted
    let pid = sup.status()[0].pid.expect("running");
    node.send(pid, "fail", Payload::new()).unwrap();
    clock.requested(1);
    clock.advance(Duration::from_secs(1));
    assert!(sup.wait_for(LIMIT, |h| h.iter().filter(|t| t.state == ServiceState::Running).count() == 2));
    sup.stop_all();
}
