//! SIGINT/SIGTERM: the first asks for a graceful shutdown, the second exits at once with 1.

use anyhow::Result;
use crossbeam_channel::{bounded, Receiver};
use signal_hook::consts::{SIGINT, SIGTERM};
use signal_hook::iterator::Signals;

/// Receives once when the first signal arrives.
pub fn install() -> Result<Receiver<()>> {
    let (tx, rx) = bounded(1);
    let mut signals = Signals::new([SIGINT, SIGTERM])?;
    std::thread::Builder::new().name("signals".into()).spawn(move || {
        let mut seen = 0;
        for sig in signals.forever() {
            seen += 1;
            if seen == 1 {
                tracing::info!(signal = sig, "shutting down (send the signal again to exit at once)");
                let _ = tx.try_send(());
            } else {
                eprintln!("wippy: second signal, exiting");
                std::process::exit(1);
            }
        }
    })?;
    Ok(rx)
}
