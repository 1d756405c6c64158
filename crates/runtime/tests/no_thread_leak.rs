//! Alone in its own test binary: it counts the OS threads of the test process.
mod common;
use common::*;
use std::time::Duration;
use wippy_runtime::*;

fn threads() -> usize {
    std::fs::read_dir("/proc/self/task").unwrap().count()
}

#[test]
fn node_shutdown_leaves_no_threads_or_processes() {
    let base = threads();
    {
        let node = Node::new().unwrap();
        node.add_host(HostConfig::new("x").workers(3).stop_timeout(Duration::from_millis(50))).unwrap();
        node.add_host(HostConfig::new("y").workers(2).stop_timeout(Duration::from_millis(50))).unwrap();
        for _ in 0..1000 {
            node.spawn("x", Spawn::process(handler_fn(|_, _| Flow::Continue))).unwrap();
            node.spawn("y", Spawn::process(Spinner)).unwrap();
        }
        assert!(threads() >= base + 6);
        let r = node.shutdown();
        assert_eq!(r.canceled, 2000);
        assert_eq!(r.stuck, 0);
        assert_eq!(node.process_count(), 0);
    }
    assert_eq!(threads(), base, "worker or dispatch threads leaked");
}
