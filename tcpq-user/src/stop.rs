//! Stop requests by signal (SIGINT, SIGTERM, SIGHUP) for the commands that poll in a loop
//! (`lab`, `diagnose`, `top`, `export`); the tracing commands use tokio's signals in cmd/ring.rs.
use std::sync::atomic::{AtomicBool, Ordering};

static STOP: AtomicBool = AtomicBool::new(false);

extern "C" fn on_signal(_: libc::c_int) {
    STOP.store(true, Ordering::SeqCst);
}

/// Installs the handlers; call before announcing that the command runs.
pub fn install() {
    for sig in [libc::SIGINT, libc::SIGTERM, libc::SIGHUP] {
        // SAFETY: the handler only stores to an atomic, which is async-signal-safe.
        unsafe {
            libc::signal(sig, on_signal as *const () as libc::sighandler_t);
        }
    }
}

/// A stop was requested.
pub fn requested() -> bool {
    STOP.load(Ordering::SeqCst)
}
