//! One frame per interval from a live session: the core `top` and `export` share (drain the
//! rings, read tier 0, find and rank the causes, build the frame).
use std::time::{Duration, Instant};

use anyhow::Result;

use super::{
    cause::Cause,
    causes::{find_causes, socket_causes},
    frame::{self, Frame, History},
    gather,
    session::{Aggregates, LiveOptions, Session},
};
use crate::{diagnosis::rank, family::sockets::aggregate::DEFAULT_IDLE, stop};

/// One interval's results.
pub struct Tick {
    pub frame: Frame,
    pub causes: Vec<Cause>,
    pub agg: Aggregates,
}

/// Produces one frame per interval from a live session.
pub struct Producer {
    pub session: Session,
    last_tick: Instant,
    last_lost: u64,
    pub history: History,
}

impl Producer {
    pub fn start(live: LiveOptions) -> Result<Self> {
        let session = Session::start(live)?;
        let now = Instant::now();
        Ok(Self {
            session,
            last_tick: now,
            last_lost: 0,
            history: History::default(),
        })
    }

    /// Ends the interval and returns its frame, causes and aggregates. What takes long to read
    /// (port usage, conntrack entries, the socket scan) comes from `session.slow`: asked for
    /// here, read off this thread, shown once ready.
    pub fn tick(&mut self) -> Tick {
        self.session.drain();
        // Tier 0 read at the interval's end: its per-listener refusals are exact per interval.
        self.session.poll(true);
        self.session.sample_acceptors();
        self.session.sample_limits();
        let secs = self.last_tick.elapsed().as_secs_f64().max(0.001);
        self.last_tick = Instant::now();
        let agg = self.session.take();
        let host = self.session.host;
        gather::want_ports(&self.session.slow, &agg);
        let mut causes = find_causes(
            &agg,
            &mut self.session.dir,
            host,
            secs,
            None,
            Some(&self.session.slow),
        );
        // Socket leaks are states, not rates: their impact is the number of sockets.
        let leaks = self.session.slow.socket_causes(DEFAULT_IDLE, socket_causes);
        causes.extend(leaks.into_iter().map(|mut c| {
            c.finding.impact = (c.finding.impact as f64 * secs) as u64;
            c
        }));
        rank(&mut causes, |c| c.finding.impact);
        let lost = self.session.lost().total();
        let header = gather::header(&self.session, lost, lost.saturating_sub(self.last_lost));
        self.last_lost = lost;
        let snaps = gather::snapshots(&mut self.session, &agg, &causes, secs);
        let frame = frame::build(header, &agg, &causes, &snaps, secs);
        self.history.record(&frame);
        Tick { frame, causes, agg }
    }

    /// Drains the rings until `deadline` (or a stop), calling `between` every ~50 ms.
    pub fn collect_until(
        &mut self,
        deadline: Instant,
        mut between: impl FnMut(Duration) -> bool,
    ) -> bool {
        while Instant::now() < deadline {
            if stop::requested() {
                return false;
            }
            self.session.drain();
            // A reading between frames that would run past the frame's due time waits for the
            // frame's own (10,000 listeners: tens of ms).
            if deadline.saturating_duration_since(Instant::now())
                > 2 * self.session.engine.poll_cost
            {
                self.session.poll(false);
            }
            let wait = deadline
                .saturating_duration_since(Instant::now())
                .min(Duration::from_millis(50));
            if !between(wait) {
                return false;
            }
        }
        true
    }
}

/// When the frame after one due at `due` is due: one `delay` later, on a fixed cadence (a tick's
/// own time does not push the next frame back); a tick that overran whole intervals skips
/// them rather than sending frames back to back.
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
}
