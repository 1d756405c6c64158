//! A real `nats-server` for one test: JetStream on, a free loopback port, a temporary
//! store directory; stopped (and its directory removed) when dropped. Readiness is the
//! server's own "Server is ready" line, not a sleep.

#![allow(dead_code)]

use std::io::{BufRead, BufReader};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::Duration;

pub struct Nats {
    child: Option<Child>,
    pub port: u16,
    dir: PathBuf,
    extra: Vec<String>,
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port()
}

impl Nats {
    pub fn start() -> Nats {
        Nats::with_args(&[])
    }

    /// With extra server flags (e.g. `--user u --pass p`).
    pub fn with_args(extra: &[&str]) -> Nats {
        static N: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);
        let dir = std::env::temp_dir().join(format!("wippy-nats-{}-{}", std::process::id(), N.fetch_add(1, std::sync::atomic::Ordering::Relaxed)));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        let mut n = Nats { child: None, port: free_port(), dir, extra: extra.iter().map(|s| s.to_string()).collect() };
        n.launch();
        n
    }

    /// With a server configuration file of this text (for settings that have no flag:
    /// NKey users, TLS). The file is gone once the server has read it, so such a server
    /// cannot be restarted.
    pub fn with_config(text: &str) -> Nats {
        let conf = std::env::temp_dir().join(format!("wippy-nats-{}-{}.conf", std::process::id(), free_port()));
        std::fs::write(&conf, text).unwrap();
        let n = Nats::with_args(&["-c", conf.to_str().unwrap()]);
        let _ = std::fs::remove_file(&conf);
        n
    }

    fn launch(&mut self) {
        let mut child = Command::new("nats-server")
            .args(["-a", "127.0.0.1", "-p", &self.port.to_string(), "-js", "-sd"])
            .arg(&self.dir)
            .args(&self.extra)
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .expect("nats-server must be installed (.ci/run installs it): apt-get install nats-server");
        let err = child.stderr.take().unwrap();
        let (tx, rx) = mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(err).lines().map_while(Result::ok) {
                if line.contains("Server is ready") {
                    let _ = tx.send(Ok(()));
                }
                if line.contains("[FTL]") || line.contains("[ERR]") && line.contains("listen") {
                    let _ = tx.send(Err(line));
                }
            }
        });
        match rx.recv_timeout(Duration::from_secs(20)) {
            Ok(Ok(())) => {}
            other => panic!("nats-server did not start: {other:?}"),
        }
        self.child = Some(child);
    }

    pub fn url(&self) -> String {
        format!("nats://127.0.0.1:{}", self.port)
    }

    /// Stop the server (its store stays), as a crash would.
    pub fn kill(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// Start it again on the same port and store.
    pub fn restart(&mut self) {
        self.kill();
        self.launch();
    }
}

impl Drop for Nats {
    fn drop(&mut self) {
        self.kill();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}
