//! One frame per interval from a live session: the core `top` and `export` share (drain the
//! rings on the event loop, read tier 0, find and rank the causes, build the frame).
use std::time::{Duration, Instant};

use anyhow::Result;

use super::{
    cause::Cause,
    causes::{find_causes, socket_causes},
    frame::{self, Frame, History},
    gather,
    session::{Aggregates, LiveOptions, Session},
};
use crate::{
    diagnosis::rank,
    event_loop::{self, Ended},
    family::sockets::aggregate::DEFAULT_IDLE,
};

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

    /// Drains the rings until `deadline` (or a stop), calling `between` (which waits at most
    /// the time it is given) at least every 50 ms; false when it ended before the deadline.
    pub fn collect_until(
        &mut self,
        deadline: Instant,
        between: impl FnMut(Duration) -> bool,
    ) -> bool {
        let session = &mut self.session;
        let ended = event_loop::run_until(
            Some(deadline),
            |now| {
                session.drain();
                // A reading between frames that would run past the frame's due time waits for
                // the frame's own (10,000 listeners: tens of ms).
                if deadline.saturating_duration_since(Instant::now()) > 2 * session.engine.poll_cost
                {
                    session.poll(false);
                }
                now + DRAIN_EVERY
            },
            between,
        );
        ended == Ended::Deadline
    }
}

/// How often the rings are drained between frames.
const DRAIN_EVERY: Duration = Duration::from_millis(50);
