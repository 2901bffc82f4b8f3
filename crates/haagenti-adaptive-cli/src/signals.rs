//! Ctrl-C, SIGTERM and SIGHUP remove the temporary files of outputs being written, then end the
//! process as the signal would (exit status 128 + the signal's number).

/// Starts, once, a thread that waits for SIGINT, SIGTERM and SIGHUP and then removes every
/// temporary file of an output being written before exiting.
///
/// The handler itself only wakes the thread (`signal-hook` does the async-signal-safe part); the
/// removal runs on the thread, where taking a lock and calling `unlink` is allowed.
#[cfg(unix)]
pub(crate) fn remove_temporaries_on_termination() -> anyhow::Result<()> {
    use std::sync::OnceLock;

    use anyhow::Context as _;
    use signal_hook::consts::{SIGHUP, SIGINT, SIGTERM};
    use signal_hook::iterator::Signals;

    static STARTED: OnceLock<()> = OnceLock::new();
    if STARTED.get().is_some() {
        return Ok(());
    }
    let mut signals =
        Signals::new([SIGINT, SIGTERM, SIGHUP]).context("cannot install signal handlers")?;
    std::thread::Builder::new()
        .name("signals".into())
        .spawn(move || {
            if let Some(signal) = signals.forever().next() {
                haagenti_adaptive::kernels::io::remove_live_temporaries();
                std::process::exit(128 + signal);
            }
        })
        .context("cannot start the signal thread")?;
    let _ = STARTED.set(());
    Ok(())
}

/// Elsewhere the default handlers stay; temporaries of an interrupted run are removed by the next
/// run that writes the same output.
#[cfg(not(unix))]
pub(crate) fn remove_temporaries_on_termination() -> anyhow::Result<()> {
    Ok(())
}
