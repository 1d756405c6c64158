//! `examples/cluster` end to end, as its README runs it: a real nats-server, three `wippy run`
//! nodes as OS processes, clients as more nodes; `kill -9` of a non-owner node and then of
//! the owner (SPEC §13).

#[path = "../../cluster/tests/support/mod.rs"]
mod support;

use std::io::{BufRead, BufReader};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc::{channel, Receiver};
use std::time::{Duration, Instant};

const LIMIT: Duration = Duration::from_secs(30);

struct WippyNode {
    child: Child,
    lines: Receiver<String>,
    log: Vec<String>,
}

impl WippyNode {
    fn start(url: &str, name: &str) -> WippyNode {
        let mut child = Command::new(env!("CARGO_BIN_EXE_wippy"))
            .args(["run", "-d", concat!(env!("CARGO_MANIFEST_DIR"), "/../../examples/cluster"), "--set", "control.enabled=false", "--cluster", url, "--node", name])
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        let err = child.stderr.take().unwrap();
        let (tx, lines) = channel();
        std::thread::spawn(move || {
            for l in BufReader::new(err).lines().map_while(Result::ok) {
                if tx.send(l).is_err() {
                    break;
                }
            }
        });
        WippyNode { child, lines, log: Vec::new() }
    }

    /// Wait for a log line containing every one of `parts` (an event, bounded by LIMIT).
    fn wait_for(&mut self, parts: &[&str]) -> String {
        let deadline = Instant::now() + LIMIT;
        if let Some(l) = self.log.iter().find(|l| parts.iter().all(|p| l.contains(p))) {
            return l.clone();
        }
        loop {
            match self.lines.recv_timeout(deadline.saturating_duration_since(Instant::now())) {
                Ok(l) => {
                    self.log.push(l.clone());
                    if parts.iter().all(|p| l.contains(p)) {
                        return l;
                    }
                }
                Err(_) => panic!("no line with {parts:?}; the node logged:\n{}", self.log.join("\n")),
            }
        }
    }
}

impl Drop for WippyNode {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn client(url: &str, name: &str, args: &[&str]) -> String {
    let out = Command::new(env!("CARGO_BIN_EXE_wippy"))
        .args(["run", "-d", concat!(env!("CARGO_MANIFEST_DIR"), "/../../examples/cluster"), "--set", "control.enabled=false", "--cluster", url, "--node", name, "kv"])
        .args(args)
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout).to_string();
    assert!(out.status.success(), "client {args:?} failed: {text}\n{}", String::from_utf8_lossy(&out.stderr));
    text
}

#[test]
fn the_cluster_example_survives_the_kill_of_a_non_owner_then_of_the_owner() {
    let nats = support::Nats::start();
    let url = nats.url();
    let mut a = WippyNode::start(&url, "a");
    a.wait_for(&["kv: serving", "node=a"]);
    let mut b = WippyNode::start(&url, "b");
    b.wait_for(&["kv: standing by"]);
    let mut c = WippyNode::start(&url, "c");
    c.wait_for(&["kv: standing by"]);
    a.wait_for(&["node joined", "\"c\""]);

    assert_eq!(client(&url, "t1", &["put", "color", "blue"]).trim(), "put color -> true (served by a)");
    let members = client(&url, "t2", &["members"]);
    assert_eq!(members.lines().collect::<Vec<_>>(), ["t2 (this node)", "a", "b", "c"]);

    // kill -9 a node that does not own the name: nothing is lost
    c.child.kill().unwrap();
    a.wait_for(&["node down", "node=c"]);
    assert_eq!(client(&url, "t3", &["get", "color"]).trim(), "get color -> blue (served by a)");

    // kill -9 the owner: the standby on b is told by its monitor and takes the name
    a.child.kill().unwrap();
    b.wait_for(&["node down", "node=a"]);
    b.wait_for(&["kv: serving", "node=b"]);
    assert_eq!(client(&url, "t4", &["put", "color", "green"]).trim(), "put color -> true (served by b)");
    assert_eq!(client(&url, "t5", &["get", "color"]).trim(), "get color -> green (served by b)");

    // a graceful stop leaves the cluster
    unsafe { libc::kill(b.child.id() as i32, libc::SIGTERM) };
    let status = b.child.wait().unwrap();
    assert!(status.success(), "{status:?}");
}
