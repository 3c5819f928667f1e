//! Stop requests by signal (SIGINT, SIGTERM, SIGHUP), for every command that runs until one
//! (the event loop in `event_loop.rs`, and `lab`). A stop also makes `wake_fd` readable, so a
//! wait that polls it ends at once — no race between checking `requested` and blocking.
//! A terminal that goes away (the tmux session killed, the ssh connection lost) is a stop too:
//! `watch_terminal` turns its hangup into a SIGHUP, so every command leaves the same way.
use std::{
    os::fd::RawFd,
    sync::atomic::{AtomicBool, AtomicI32, Ordering},
};

static STOP: AtomicBool = AtomicBool::new(false);
static WATCHING: AtomicBool = AtomicBool::new(false);
/// The self-pipe a stop writes to (-1 until `install` made it): read end, write end.
static WAKE_READ: AtomicI32 = AtomicI32::new(-1);
static WAKE_WRITE: AtomicI32 = AtomicI32::new(-1);

extern "C" fn on_signal(_: libc::c_int) {
    STOP.store(true, Ordering::SeqCst);
    let fd = WAKE_WRITE.load(Ordering::SeqCst);
    if fd >= 0 {
        // SAFETY: write(2) of one byte from a static is async-signal-safe; a full pipe (a stop
        // already pending) fails with EAGAIN, which is fine.
        unsafe {
            libc::write(fd, c"!".as_ptr().cast(), 1);
        }
    }
}

/// Installs the handlers (and the wake pipe, once); call before announcing that the command
/// runs.
pub fn install() {
    if WAKE_READ.load(Ordering::SeqCst) < 0 {
        let mut ends = [-1 as libc::c_int; 2];
        // SAFETY: pipe2 writes two descriptors into the two-element array it is given.
        if unsafe { libc::pipe2(ends.as_mut_ptr(), libc::O_NONBLOCK | libc::O_CLOEXEC) } == 0 {
            WAKE_WRITE.store(ends[1], Ordering::SeqCst);
            WAKE_READ.store(ends[0], Ordering::SeqCst);
        } else {
            // Waits then end at their timeout instead (bounded: a second at most).
            log::warn!("create the stop pipe: {}", std::io::Error::last_os_error());
        }
    }
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

/// A descriptor that is readable from the moment a stop is requested (never drained: every
/// later wait ends at once too); None before `install`.
pub fn wake_fd() -> Option<RawFd> {
    let fd = WAKE_READ.load(Ordering::SeqCst);
    (fd >= 0).then_some(fd)
}

/// Watches the terminals tcpq runs on (stdin, stdout, stderr: those that are one) from a thread
/// blocked in poll(2). When one hangs up, its descriptors are pointed at /dev/null (what is
/// still written — a last frame, the summary, restoring the screen — must not fail with EIO and
/// panic), a stop is requested and tcpq sends itself SIGHUP, which ends whatever the command
/// waits in. Call once a SIGHUP handler is in place (`install`).
pub fn watch_terminal() {
    if WATCHING.swap(true, Ordering::SeqCst) {
        return;
    }
    // SAFETY: isatty only inspects the descriptor.
    let ttys: Vec<RawFd> = (0..=2)
        .filter(|&fd| unsafe { libc::isatty(fd) } == 1)
        .collect();
    if ttys.is_empty() {
        return;
    }
    if let Err(e) = std::thread::Builder::new()
        .name("tcpq-tty".into())
        .spawn(move || watch(ttys))
    {
        log::warn!("watch the terminal for a hangup: {e}");
    }
}

/// Blocks until one of `ttys` hangs up (then stops tcpq) or none is left to watch.
fn watch(ttys: Vec<RawFd>) {
    // No events asked: poll reports only POLLHUP / POLLERR (a hung-up terminal) and POLLNVAL.
    let mut fds: Vec<libc::pollfd> = ttys
        .iter()
        .map(|&fd| libc::pollfd {
            fd,
            events: 0,
            revents: 0,
        })
        .collect();
    while !fds.is_empty() {
        // SAFETY: `fds` is a live array of `fds.len()` pollfd structs for the whole call.
        let n = unsafe { libc::poll(fds.as_mut_ptr(), fds.len() as libc::nfds_t, -1) };
        if n < 0 {
            if std::io::Error::last_os_error().kind() == std::io::ErrorKind::Interrupted {
                continue; // a signal: block again
            }
            return; // poll itself failed: signals still stop tcpq
        }
        let lost: Vec<RawFd> = fds
            .iter()
            .filter(|p| p.revents & (libc::POLLHUP | libc::POLLERR) != 0)
            .map(|p| p.fd)
            .collect();
        if !lost.is_empty() {
            terminal_lost(&lost);
            return;
        }
        // A descriptor closed under us would be reported at once, every time: drop it. Anything
        // else (not expected with no events asked) ends the watch rather than spin.
        let before = fds.len();
        fds.retain(|p| p.revents & libc::POLLNVAL == 0);
        if fds.len() == before {
            return;
        }
    }
}

fn terminal_lost(fds: &[RawFd]) {
    STOP.store(true, Ordering::SeqCst);
    // SAFETY: open/dup2/close on descriptor numbers only (dup2 atomically replaces a standard
    // descriptor this process owns; writes in flight finish on the old file); kill and getpid
    // have no memory effects, and a SIGHUP handler is installed (see `watch_terminal`).
    unsafe {
        let null = libc::open(c"/dev/null".as_ptr(), libc::O_RDWR | libc::O_CLOEXEC);
        if null >= 0 {
            for &fd in fds {
                libc::dup2(null, fd);
            }
            libc::close(null);
        }
        libc::kill(libc::getpid(), libc::SIGHUP);
    }
}
