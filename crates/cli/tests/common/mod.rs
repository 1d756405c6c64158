//! The long-running `wippy` a test talks to: its stderr lines arrive on a channel, every
//! wait is for a line (an event), bounded by a deadline. Shared by the test files that run
//! the real binary (each uses part of it).
#![allow(dead_code)]

use std::io::{BufRead, BufReader};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

pub struct Running {
    pub child: Child,
    lines: mpsc::Receiver<String>,
    pub seen: Vec<String>,
}

impl Running {
    /// Start `cmd` (stdout discarded, stderr read line by line).
    pub fn spawn(mut cmd: Command) -> Running {
        let mut child = cmd.stdout(Stdio::null()).stderr(Stdio::piped()).spawn().unwrap();
        let (tx, lines) = mpsc::channel();
        let err = child.stderr.take().unwrap();
        std::thread::spawn(move || {
            for line in BufReader::new(err).lines().map_while(Result::ok) {
                if tx.send(line).is_err() {
                    break;
                }
            }
        });
        Running { child, lines, seen: Vec::new() }
    }

    /// A line with every one of `parts`, already seen or still to come (at most 60s).
    pub fn saw_or_wait(&mut self, parts: &[&str]) -> String {
        match self.seen.iter().find(|l| parts.iter().all(|p| l.contains(p))) {
            Some(l) => l.clone(),
            None => self.wait_for(parts),
        }
    }

    /// Wait (at most 60s) for a line with every one of `parts`.
    pub fn wait_for(&mut self, parts: &[&str]) -> String {
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match self.lines.recv_timeout(left) {
                Ok(line) => {
                    self.seen.push(line.clone());
                    if parts.iter().all(|p| line.contains(p)) {
                        return line;
                    }
                }
                Err(_) => {
                    let _ = self.child.kill();
                    panic!("no line with {parts:?} within 60s; saw:\n{}", self.seen.join("\n"));
                }
            }
        }
    }

    pub fn interrupt(&self) {
        self.signal(libc::SIGINT);
    }

    pub fn signal(&self, sig: i32) {
        // SAFETY: kill(2) on our own child's PID.
        unsafe { libc::kill(self.child.id() as i32, sig) };
    }

    /// Exit code, waiting at most 30s (the lines written until then are in `seen`).
    pub fn exit_code(&mut self) -> Option<i32> {
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            if let Some(s) = self.child.try_wait().unwrap() {
                while let Ok(l) = self.lines.recv_timeout(Duration::from_millis(200)) {
                    self.seen.push(l);
                }
                return s.code();
            }
            if Instant::now() > deadline {
                let _ = self.child.kill();
                panic!("did not exit within 30s; saw:\n{}", self.seen.join("\n"));
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

impl Drop for Running {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Write a project (`src/_index.yaml` and any other files, paths relative to the project)
/// into a fresh temporary directory, run `wippy -s -d DIR ARGS...` to its end, and give its
/// exit code and stdout (stderr is in the panic message when the code is not 0). The
/// directory is removed afterwards.
pub fn run_project(tag: &str, files: &[(&str, &str)], args: &[&str]) -> String {
    let dir = std::env::temp_dir().join(format!("wippy-{tag}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    for (path, text) in files {
        let p = dir.join(path);
        std::fs::create_dir_all(p.parent().unwrap()).unwrap();
        std::fs::write(p, text).unwrap();
    }
    let o = Command::new(env!("CARGO_BIN_EXE_wippy")).arg("-s").arg("-d").arg(&dir).args(args).output().unwrap();
    let out = String::from_utf8_lossy(&o.stdout).to_string();
    assert_eq!(o.status.code(), Some(0), "stdout: {out}\nstderr: {}", String::from_utf8_lossy(&o.stderr));
    std::fs::remove_dir_all(&dir).unwrap();
    out
}
