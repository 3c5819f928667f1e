//! The one event loop of tcpq's commands. Every command that runs until a stop, a duration or a
//! frame's due time (`trace …` in cmd/ring.rs, `diagnose`, `top`, `export` through
//! live/producer.rs) turns here: do the work that is due, then block until the next thing is
//! due, a ring has records, or a stop (SIGINT/SIGTERM/SIGHUP, a lost terminal) — never spin,
//! never sleep past a stop (the stop's wake pipe is in every wait).
use std::{
    os::fd::RawFd,
    time::{Duration, Instant},
};

use crate::stop;

/// Why `run_until` returned.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Ended {
    /// The deadline passed.
    Deadline,
    /// A stop was requested.
    Stopped,
    /// The wait said so (a quit key, a terminal gone, a failed draw).
    Caller,
}

/// Turns until `deadline` (None: until a stop): `turn(now)` does what is due and returns when it
/// wants the next turn; `wait(timeout)` blocks until then (or the deadline, if sooner) and
/// returns false to end the loop. The deadline and a stop are checked before every turn.
pub fn run_until(
    deadline: Option<Instant>,
    mut turn: impl FnMut(Instant) -> Instant,
    mut wait: impl FnMut(Duration) -> bool,
) -> Ended {
    loop {
        if stop::requested() {
            return Ended::Stopped;
        }
        let now = Instant::now();
        if deadline.is_some_and(|d| now >= d) {
            return Ended::Deadline;
        }
        let next = turn(now);
        let until = deadline.map_or(next, |d| next.min(d));
        if !wait(until.saturating_duration_since(Instant::now())) {
            return Ended::Caller;
        }
    }
}

/// The most descriptors a wait watches besides the stop pipe (tcpq waits on one ring).
const MAX_WAIT_FDS: usize = 4;

/// Blocks until one of `fds` is readable, `timeout` passes or a stop is requested. A failure of
/// poll(2) or a descriptor it cannot watch turns into sleeping out the timeout: bounded, never a
/// spin.
pub fn wait_readable(fds: &[RawFd], timeout: Duration) {
    let mut set = [libc::pollfd {
        fd: -1,
        events: 0,
        revents: 0,
    }; MAX_WAIT_FDS + 1];
    let watched = fds
        .iter()
        .copied()
        .take(MAX_WAIT_FDS)
        .chain(stop::wake_fd())
        .zip(set.iter_mut())
        .map(|(fd, slot)| {
            slot.fd = fd;
            slot.events = libc::POLLIN;
        })
        .count();
    let ms = poll_ms(timeout);
    // SAFETY: `set` is a live array of at least `watched` pollfd structs for the whole call.
    let n = unsafe { libc::poll(set.as_mut_ptr(), watched as libc::nfds_t, ms) };
    let interrupted =
        n < 0 && std::io::Error::last_os_error().kind() == std::io::ErrorKind::Interrupted;
    let unusable = set[..watched]
        .iter()
        .any(|p| p.revents & (libc::POLLNVAL | libc::POLLERR) != 0);
    if (n < 0 && !interrupted) || unusable {
        std::thread::sleep(timeout);
    }
}

/// Sleeps `timeout`, or less if a stop comes first.
pub fn sleep(timeout: Duration) {
    wait_readable(&[], timeout);
}

/// poll(2)'s timeout for `timeout`: whole milliseconds rounded up (a sub-millisecond wait
/// rounded down to 0 would turn the loop into a spin until it is due).
fn poll_ms(timeout: Duration) -> libc::c_int {
    let ms = timeout.as_micros().div_ceil(1000);
    libc::c_int::try_from(ms).unwrap_or(libc::c_int::MAX)
}

/// A fixed cadence: `fire` is true once per period from `first` on; a turn that overran whole
/// periods skips them (no burst of catch-up turns).
#[derive(Debug, Clone, Copy)]
pub struct Every {
    due: Instant,
    period: Duration,
}

impl Every {
    pub fn new(first: Instant, period: Duration) -> Self {
        Self {
            due: first,
            // A zero period would make every turn due at once: a spin.
            period: period.max(Duration::from_millis(1)),
        }
    }

    /// True when the period's turn is due at `now` (and the next one is then scheduled).
    pub fn fire(&mut self, now: Instant) -> bool {
        if now < self.due {
            return false;
        }
        self.due = next_due(self.due, self.period, now);
        true
    }

    /// When it fires next.
    pub fn due(&self) -> Instant {
        self.due
    }
}

/// When the turn after one due at `due` is due: one `delay` later, on a fixed cadence (a turn's
/// own time does not push the next one back); a turn that overran whole intervals skips
/// them rather than running back to back.
pub fn next_due(due: Instant, delay: Duration, now: Instant) -> Instant {
    let next = due + delay;
    if next > now || delay.is_zero() {
        return next.max(now);
    }
    let behind = now.saturating_duration_since(next).as_nanos() / delay.as_nanos();
    let skip = u32::try_from(behind + 1).unwrap_or(u32::MAX);
    next + delay * skip
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn frames_keep_a_fixed_cadence_and_skip_what_a_long_tick_overran() {
        let t0 = Instant::now();
        let d = Duration::from_secs(1);
        let ms = Duration::from_millis;
        // A 30 ms tick does not push the next frame back.
        assert_eq!(next_due(t0, d, t0 + ms(30)), t0 + d);
        // A tick that overran the next slot: the one after it, not at once.
        assert_eq!(next_due(t0, d, t0 + ms(1500)), t0 + 2 * d);
        assert_eq!(next_due(t0, d, t0 + ms(3000)), t0 + 4 * d);
        assert_eq!(next_due(t0, Duration::ZERO, t0 + ms(5)), t0 + ms(5));
    }

    #[test]
    fn every_fires_once_per_period_and_never_with_a_zero_wait() {
        let t0 = Instant::now();
        let ms = Duration::from_millis;
        let mut tick = Every::new(t0, ms(100));
        assert!(tick.fire(t0));
        assert!(!tick.fire(t0 + ms(50)));
        assert_eq!(tick.due(), t0 + ms(100));
        assert!(tick.fire(t0 + ms(350)));
        // Overran 2½ periods: the next turn is the next slot, not three at once.
        assert_eq!(tick.due(), t0 + ms(400));
        let mut zero = Every::new(t0, Duration::ZERO);
        assert!(zero.fire(t0));
        assert!(zero.due() > t0);
    }

    #[test]
    fn poll_timeouts_round_up_to_whole_milliseconds() {
        assert_eq!(poll_ms(Duration::ZERO), 0);
        assert_eq!(poll_ms(Duration::from_micros(300)), 1);
        assert_eq!(poll_ms(Duration::from_millis(50)), 50);
        assert_eq!(poll_ms(Duration::from_secs(u64::MAX)), libc::c_int::MAX);
    }

    #[test]
    fn the_loop_ends_at_its_deadline_or_when_the_wait_says_so() {
        let start = Instant::now();
        let mut turns = 0;
        let ended = run_until(
            Some(start + Duration::from_millis(30)),
            |now| {
                turns += 1;
                now + Duration::from_millis(10)
            },
            |t| {
                sleep(t);
                true
            },
        );
        assert_eq!(ended, Ended::Deadline);
        assert!(turns >= 1);
        let ended = run_until(None, |now| now, |_| false);
        assert_eq!(ended, Ended::Caller);
    }

    #[test]
    fn a_readable_descriptor_ends_the_wait() {
        let mut ends = [-1; 2];
        // SAFETY: pipe2 fills the two-element array.
        assert_eq!(
            unsafe { libc::pipe2(ends.as_mut_ptr(), libc::O_CLOEXEC) },
            0
        );
        // SAFETY: one byte from a static into the pipe's write end.
        assert_eq!(unsafe { libc::write(ends[1], c"x".as_ptr().cast(), 1) }, 1);
        let t0 = Instant::now();
        wait_readable(&[ends[0]], Duration::from_secs(30));
        assert!(t0.elapsed() < Duration::from_secs(20));
        // SAFETY: closing the pipe this test made.
        unsafe {
            libc::close(ends[0]);
            libc::close(ends[1]);
        }
    }
}
