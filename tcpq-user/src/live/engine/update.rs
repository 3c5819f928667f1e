//! Tier 0's one step: a reading of every namespace folded into the listener totals and the
//! families' trouble signals (`Tier0::update`).
use std::collections::HashMap;

use super::{
    CONNECT_COUNTERS, LISTEN_COUNTERS, ListenerId, Signals, Tier0, gone_weights, share_drops,
};
use crate::snapshot::{nswatch::NsReading, sockdiag::TCP_LISTEN};

/// A queue that holds at least max(QUEUED_AT_LEAST, backlog / 8) connections at
/// `QUEUED_READINGS` readings in a row (≥ 0.5 s) means the application does not drain it: its
/// accept waits are worth tracing even far below the backlog (workers all busy, a slow accept
/// loop). A busy healthy server has a few connections queued at any instant (nginx pinned to one
/// CPU under wrk -c200: 2–6 of 4096 at every reading), which is not trouble.
const QUEUED_AT_LEAST: u32 = 16;
const QUEUED_READINGS: u32 = 3;

/// Whether a queue this long counts as not drained.
fn queued(queue: u32, backlog: u32) -> bool {
    queue >= QUEUED_AT_LEAST.max(backlog / 8)
}

fn moved(before: &HashMap<String, u64>, now: &HashMap<String, u64>, name: &str) -> u64 {
    match (before.get(name), now.get(name)) {
        (Some(b), Some(n)) => n.saturating_sub(*b),
        _ => 0,
    }
}

impl Tier0 {
    /// Folds one reading of every namespace in; returns the families with trouble.
    pub fn update(&mut self, readings: Vec<NsReading>) -> Signals {
        let start = self.readings == 0;
        self.readings += 1;
        let mut sig = Signals::default();
        for l in self.listeners.values_mut() {
            l.was_present = std::mem::replace(&mut l.present, false);
        }
        let seen: std::collections::HashSet<u32> = readings.iter().map(|r| r.inum).collect();
        for r in readings {
            if r.unread {
                // Its dump failed: its listeners are as they were (not closed), its counters
                // and pending refusals wait for the next reading, which continues from here.
                for (_, t) in self
                    .listeners
                    .iter_mut()
                    .filter(|(id, _)| id.netns == r.inum)
                {
                    t.present = t.was_present;
                }
                if start {
                    self.unread_at_start.insert(r.inum);
                }
                continue;
            }
            // Its first reading: what it counted so far is from before tcpq watched (also for a
            // namespace whose dump failed at tcpq's first reading).
            let first = start || self.unread_at_start.remove(&r.inum);
            let mut moved_here: Vec<(ListenerId, u64)> = Vec::new();
            for s in r.listeners.iter().filter(|s| s.state == TCP_LISTEN) {
                let id = ListenerId {
                    netns: r.inum,
                    laddr: s.laddr,
                    lport: s.lport,
                    cookie: s.cookie,
                };
                let drops = s.drops.unwrap_or(0);
                let known = self.listeners.contains_key(&id);
                let t = self.listeners.entry(id).or_default();
                // A listener first seen after the first reading was created since: every drop
                // it has counted happened while tcpq watched (its sk_drops started at 0).
                let delta = match (known, first) {
                    (true, _) => drops.wrapping_sub(t.last_drops) as u64,
                    (false, true) => 0,
                    (false, false) => drops as u64,
                };
                t.last_drops = drops;
                t.last_moved = delta;
                t.queue = s.recv_queue;
                t.backlog = s.send_queue;
                t.queue_peak = t.queue_peak.max(s.recv_queue);
                t.present = true;
                t.queued_readings = if queued(s.recv_queue, s.send_queue) {
                    t.queued_readings + 1
                } else {
                    0
                };
                moved_here.push((id, delta));
                if sig.listen.is_none() {
                    if delta > 0 {
                        sig.listen = Some(format!(
                            "{} refused at {} (netns {})",
                            delta,
                            crate::render::endpoint(s.laddr, s.lport),
                            r.inum
                        ));
                    } else if s.send_queue > 0 && s.recv_queue * 2 > s.send_queue {
                        sig.listen = Some(format!(
                            "accept queue {}/{} at {} (netns {})",
                            s.recv_queue,
                            s.send_queue,
                            crate::render::endpoint(s.laddr, s.lport),
                            r.inum
                        ));
                    } else if t.queued_readings >= QUEUED_READINGS {
                        sig.listen = Some(format!(
                            "accept queue not drained for {} readings ({}/{}) at {} (netns {})",
                            t.queued_readings,
                            s.recv_queue,
                            s.send_queue,
                            crate::render::endpoint(s.laddr, s.lport),
                            r.inum
                        ));
                    }
                }
            }
            // sk_drops movements wait for the namespace's next counters reading (every reading
            // where one moved, see nswatch::COUNTERS_EVERY).
            let pend = self.pending.entry(r.inum).or_default();
            for (id, d) in moved_here.iter().filter(|(_, d)| *d > 0) {
                match pend.weights.iter_mut().find(|(i, _)| i == id) {
                    Some((_, w)) => *w += d,
                    None => pend.weights.push((*id, *d)),
                }
            }
            if let Some(counters) = r.counters.as_ref() {
                // The namespace's ListenDrops since its last reading (all of it for a namespace
                // created since tcpq started), shared among its listeners by their sk_drops;
                // drops whose sk_drops had not moved yet (the two reads are not atomic) wait.
                let listen_drops = counters.get("TcpExt:ListenDrops").copied().unwrap_or(0);
                pend.drops += match self.counters.get(&r.inum) {
                    Some(before) => moved(before, counters, "TcpExt:ListenDrops"),
                    None if first => 0,
                    None => listen_drops,
                };
                let mut shares = share_drops(pend.drops, &pend.weights);
                let mut guess = false;
                if shares.is_empty() && pend.drops > 0 {
                    // No listener's sk_drops moved: the drops were the last ones of listeners
                    // closed since the last reading (a lab or a restart), shared by how fast
                    // each was refusing when last seen, not evenly: a listener closed at the
                    // same time that never refused must not take any.
                    let gone: Vec<(ListenerId, u64, u64)> = self
                        .listeners
                        .iter()
                        .filter(|(id, t)| id.netns == r.inum && t.was_present && !t.present)
                        .map(|(id, t)| (*id, t.last_moved, t.refused_total))
                        .collect();
                    let (weights, g) = gone_weights(&gone);
                    shares = share_drops(pend.drops, &weights);
                    guess = g;
                }
                if !shares.is_empty() {
                    pend.drops = 0;
                    pend.weights.clear();
                    pend.waited = 0;
                } else if pend.drops > 0 {
                    // Counted between the dump and the counters (the two reads are not
                    // atomic): the listener's sk_drops shows them at the next reading. Still
                    // no listener then: ones created and closed between two readings. Counted
                    // for the namespace, not kept waiting (never silently lower).
                    pend.waited += 1;
                    if pend.waited >= 2 {
                        *self.unattributed.entry(r.inum).or_default() += pend.drops;
                        pend.drops = 0;
                        pend.waited = 0;
                    }
                }
                for (id, n) in shares {
                    if let Some(t) = self.listeners.get_mut(&id) {
                        t.refused_total += n;
                        t.refused_interval += n;
                        if guess {
                            t.uncertain_interval += n;
                        }
                    }
                }
                if let Some(before) = self.counters.get(&r.inum) {
                    for (names, slot) in [
                        (LISTEN_COUNTERS, &mut sig.listen),
                        (CONNECT_COUNTERS, &mut sig.connect),
                    ] {
                        if slot.is_some() {
                            continue;
                        }
                        if let Some((name, n)) = names
                            .iter()
                            .map(|n| (n, moved(before, counters, n)))
                            .find(|(_, n)| *n > 0)
                        {
                            *slot = Some(format!("{name} +{n} (netns {})", r.inum));
                        }
                    }
                }
            }
            if let Some(counters) = r.counters {
                self.counters.insert(r.inum, counters);
            }
            if let Some(ct) = r.conntrack {
                let before = self.conntrack.insert(r.inum, ct);
                if sig.conntrack.is_none() {
                    let dropped = before.map(|b| ct.drop.saturating_sub(b.drop)).unwrap_or(0);
                    if dropped > 0 {
                        sig.conntrack = Some(format!(
                            "conntrack dropped {dropped} (netns {}, {}/{})",
                            r.inum, ct.count, ct.max
                        ));
                    } else if ct.max > 0 && ct.count * 10 >= ct.max * 9 {
                        sig.conntrack = Some(format!(
                            "conntrack {}/{} entries (netns {})",
                            ct.count, ct.max, r.inum
                        ));
                    }
                }
            }
        }
        // Namespaces gone: forget their counters.
        self.counters.retain(|ns, _| seen.contains(ns));
        self.pending.retain(|ns, _| seen.contains(ns));
        self.conntrack.retain(|ns, _| seen.contains(ns));
        sig
    }
}
