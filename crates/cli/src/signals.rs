//! Signals: the first SIGINT/SIGTERM asks for a graceful shutdown, the second exits at
//! once with 1; SIGUSR1 asks for the service status table.

use anyhow::Result;
use crossbeam_channel::{bounded, Receiver};
use signal_hook::consts::{SIGINT, SIGTERM, SIGUSR1};
use signal_hook::iterator::Signals;

pub struct Requests {
    /// Receives once, on the first SIGINT/SIGTERM.
    pub stop: Receiver<()>,
    /// Receives on every SIGUSR1.
    pub status: Receiver<()>,
}

pub fn install() -> Result<Requests> {
    let (stop_tx, stop) = bounded(1);
    let (status_tx, status) = bounded(1);
    let mut signals = Signals::new([SIGINT, SIGTERM, SIGUSR1])?;
    std::thread::Builder::new().name("signals".into()).spawn(move || {
        let mut seen = 0;
        for sig in signals.forever() {
            if sig == SIGUSR1 {
                let _ = status_tx.try_send(());
                continue;
            }
            seen += 1;
            if seen == 1 {
                tracing::info!(signal = sig, "shutting down (send the signal again to exit at once)");
                let _ = stop_tx.try_send(());
            } else {
                eprintln!("wippy: second signal, exiting");
                std::process::exit(1);
            }
        }
    })?;
    Ok(Requests { stop, status })
}
