//! Tier 0 read on a schedule and the families armed or disarmed on its signals
//! (`Session::poll`), and each family's state as the renderers show it.
use std::{
    collections::BTreeMap,
    time::{Duration, Instant},
};

use tcpq_common::names;

use super::{LiveOptions, Session};
use crate::{
    kernel::probe::Family,
    live::engine::{self, Arm, FamilyView, Step, Tier0},
    snapshot::nswatch::NsWatcher,
};

/// Tier 0 and the arming of tier 2 (see `live::engine`).
pub struct Engine {
    pub(super) watcher: NsWatcher,
    pub tier0: Tier0,
    /// Listen (with Accept), Connect, Drop.
    pub arms: BTreeMap<Family, Arm>,
    pub opts: LiveOptions,
    pub(super) last_poll: Option<Instant>,
    /// Between frames, tier 0 is read this often (engine::next_poll_after).
    pub(super) poll_every: Duration,
    /// What the last reading took.
    pub poll_cost: Duration,
    /// Tier-1 signals since the last poll: EADDRNOTAVAIL handshakes, table-full drops.
    pub(super) failed_port_searches: u64,
    pub(super) table_full_drops: u64,
    /// The listen family was just disarmed: read its per-listener tallies once more.
    pub(super) listen_flush: bool,
}

impl Engine {
    /// Network namespaces tier 0 reads now.
    pub fn namespaces(&self) -> usize {
        self.watcher.namespaces()
    }
}

/// The families the engine arms, as the renderers name them.
pub const ARMED_FAMILIES: [(Family, &str); 3] = [
    (Family::Listen, "listen"),
    (Family::Connect, "connect"),
    (Family::Drop, "conntrack"),
];

impl Session {
    /// Reads tier 0 (at most every `engine::POLL_EVERY` unless `now`) and arms or disarms the
    /// families whose signals moved or went quiet.
    pub fn poll(&mut self, now: bool) {
        let e = &mut self.engine;
        // A frame's own reading (`now`) keeps intervals exact (unless one just ran); between
        // frames, big tables are read less often (engine::next_poll_after).
        let wait = if now {
            Duration::from_millis(50)
        } else {
            e.poll_every
        };
        if e.last_poll.is_some_and(|t| t.elapsed() < wait) {
            return;
        }
        let started = Instant::now();
        e.last_poll = Some(started);
        let readings = e.watcher.poll(now);
        let sig = e.tier0.update(readings);
        e.poll_cost = started.elapsed();
        e.poll_every = engine::next_poll_after(e.poll_cost);
        let connect = sig.connect.or_else(|| {
            (e.failed_port_searches > 0).then(|| {
                format!(
                    "{} connect() found no free port (EADDRNOTAVAIL)",
                    e.failed_port_searches
                )
            })
        });
        let conntrack = sig.conntrack.or_else(|| {
            (e.table_full_drops > 0).then(|| {
                format!(
                    "{} packets dropped: conntrack table full",
                    e.table_full_drops
                )
            })
        });
        e.failed_port_searches = 0;
        e.table_full_drops = 0;
        if e.opts.hooks_all {
            return;
        }
        let at = Instant::now();
        for (family, trouble) in [
            (Family::Listen, sig.listen),
            (Family::Connect, connect),
            (Family::Drop, conntrack),
        ] {
            if !self.loaded.armable(family) {
                continue;
            }
            let Some(arm) = self.engine.arms.get_mut(&family) else {
                continue;
            };
            match arm.step(at, trouble.as_deref(), self.engine.opts.quiet) {
                Step::Arm => {
                    // The accept family's waits and idle acceptors explain a listener's trouble:
                    // armed with it.
                    let mut refused = self.loaded.arm(family);
                    if family == Family::Listen {
                        refused.extend(self.loaded.arm(Family::Accept));
                    }
                    // E.g. a capability export dropped after start that this kernel wants.
                    for why in refused {
                        log::warn!("attach {why}");
                    }
                }
                Step::Disarm => {
                    self.loaded.disarm(family);
                    match family {
                        Family::Listen => {
                            self.loaded.disarm(Family::Accept);
                            self.engine.listen_flush = true;
                        }
                        // Owners recorded while armed are not removed at close any more: a
                        // socket pointer reused later must not find a stale one.
                        Family::Drop => self
                            .loaded
                            .clear_socket_map::<{ tcpq_common::OWNER_SIZE }>(names::SOCK_OWNER),
                        _ => {}
                    }
                }
                Step::Stay => {}
            }
        }
    }

    /// Each armed family's state, as shown by top, export and diagnose.
    pub fn families(&self) -> Vec<FamilyView> {
        ARMED_FAMILIES
            .iter()
            .map(|(family, name)| {
                let arm = self.engine.arms.get(family).cloned().unwrap_or_default();
                let available = self.missing.iter().all(|(f, _)| f != family);
                if !available {
                    FamilyView {
                        family: name,
                        state: "unavailable",
                        since: 0,
                        why: "its core hook could not be attached (see hooks_inactive)".into(),
                    }
                } else if self.engine.opts.hooks_all {
                    FamilyView {
                        family: name,
                        state: "tracing",
                        since: 0,
                        why: "--hooks all".into(),
                    }
                } else {
                    FamilyView {
                        family: name,
                        state: if arm.tracing { "tracing" } else { "watching" },
                        since: arm.since_unix,
                        why: arm.why,
                    }
                }
            })
            .collect()
    }
}
