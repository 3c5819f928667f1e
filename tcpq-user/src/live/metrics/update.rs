//! Folding one interval's aggregates, causes and losses into the series (`Metrics::update`).
use std::{
    collections::HashMap,
    time::{SystemTime, UNIX_EPOCH},
};

use prometheus_client::metrics::histogram::Histogram;

use super::*;
use crate::{
    family::listen::decode::OverflowKind,
    live::{
        cause::Cause,
        session::{Aggregates, Lost},
    },
    render::endpoint,
};

/// Listener owners remembered (beyond it, a listener whose owner is not found this interval is
/// labelled with no process).
const MAX_KNOWN_OWNERS: usize = 10_000;

/// This process's CPU seconds (user + system) and resident bytes, from /proc/self.
fn own_usage() -> Option<(f64, u64)> {
    let stat = std::fs::read_to_string("/proc/self/stat").ok()?;
    // Fields after the command (which may hold spaces): state is field 3, utime 14, stime 15.
    let rest = &stat[stat.rfind(')')? + 2..];
    let f: Vec<&str> = rest.split_whitespace().collect();
    let ticks: u64 = f.get(11)?.parse::<u64>().ok()? + f.get(12)?.parse::<u64>().ok()?;
    // SAFETY: sysconf has no preconditions.
    let hz = unsafe { libc::sysconf(libc::_SC_CLK_TCK) }.max(1) as f64;
    let statm = std::fs::read_to_string("/proc/self/statm").ok()?;
    let pages: u64 = statm.split_whitespace().nth(1)?.parse().ok()?;
    // SAFETY: sysconf has no preconditions.
    let page = unsafe { libc::sysconf(libc::_SC_PAGESIZE) }.max(1) as u64;
    Some((ticks as f64 / hz, pages * page))
}

/// Adds an interval's nanosecond histogram to a Prometheus histogram in seconds.
fn observe_ns(into: &Histogram, from: &hdrhistogram::Histogram<u64>) {
    for v in from.iter_recorded() {
        for _ in 0..v.count_since_last_iteration() {
            into.observe(v.value_iterated_to() as f64 / 1e9);
        }
    }
}

impl Metrics {
    /// Adds one interval. `owners` names a listener's owner ((netns, port) → process, pod,
    /// container); `pods` the pod and container of a connecting process (pid → (pod, container)).
    pub fn update(
        &mut self,
        agg: &Aggregates,
        causes: &[Cause],
        lost: Lost,
        owners: &HashMap<(u32, u16), Owner>,
        pods: &HashMap<u32, (String, String)>,
    ) {
        self.events.inc_by(agg.events);
        // Predicted kinds (counters first) are capped at tier 0's exact count, as in `top`.
        let exact: HashMap<(u32, std::net::IpAddr, u16), u64> = agg
            .tier0_listeners
            .iter()
            .map(|(id, t)| ((id.netns, id.laddr, id.lport), t.refused_interval))
            .collect();
        for (k, o) in owners {
            if self.known_owners.len() < MAX_KNOWN_OWNERS || self.known_owners.contains_key(k) {
                self.known_owners.insert(*k, o.clone());
            }
        }
        for a in agg.overflow.listeners.values() {
            let mut total = a.total;
            if !agg.listen_confirmed
                && let Some(n) = exact.get(&(a.key.netns, a.key.laddr, a.key.lport))
            {
                total.cap_refusals(*n);
            }
            let listener = self
                .listeners_budget
                .label(endpoint(a.key.laddr, a.key.lport));
            let netns = self.netns_budget.label(a.key.netns.to_string());
            let owner = self.owner_labels(a.key.netns, a.key.lport);
            for k in OverflowKind::ALL {
                let n = total.get(k);
                if n > 0 {
                    self.listen
                        .get_or_create(&ListenerLabels {
                            netns: netns.clone(),
                            listener: listener.clone(),
                            process: owner.process.clone(),
                            pod: owner.pod.clone(),
                            container: owner.container.clone(),
                            kind: k.id().to_string(),
                        })
                        .inc_by(n);
                }
            }
        }
        for (id, t) in &agg.tier0_listeners {
            if t.refused_interval == 0 {
                continue;
            }
            let owner = self.owner_labels(id.netns, id.lport);
            let l = ListenerProcess {
                netns: self.netns_budget.label(id.netns.to_string()),
                listener: self.listeners_budget.label(endpoint(id.laddr, id.lport)),
                process: owner.process,
                pod: owner.pod,
                container: owner.container,
            };
            self.refused.get_or_create(&l).inc_by(t.refused_interval);
            if t.uncertain_interval > 0 {
                self.uncertain
                    .get_or_create(&l)
                    .inc_by(t.uncertain_interval);
            }
        }
        // Refusals no listener could be named for (created and closed between two readings):
        // a series of their own, so a namespace's series still add up to its ListenDrops.
        for (ns, n) in &agg.tier0_unattributed {
            let l = ListenerProcess {
                netns: self.netns_budget.label(ns.to_string()),
                listener: UNATTRIBUTED.to_string(),
                process: String::new(),
                pod: String::new(),
                container: String::new(),
            };
            self.refused.get_or_create(&l).inc_by(*n);
        }
        for f in &agg.families {
            self.family_armed
                .get_or_create(&FamilyLabel {
                    family: f.family.into(),
                })
                .set((f.state == "tracing") as i64);
        }
        for ((ns, laddr, lport), s) in &agg.accepts {
            let l = ListenerOnly {
                netns: self.netns_budget.label(ns.to_string()),
                listener: self.listeners_budget.label(endpoint(*laddr, *lport)),
            };
            self.accepts.get_or_create(&l).inc_by(s.accepts);
            let h = self.accept_wait.get_or_create(&l);
            observe_ns(&h, &s.wait_ns);
        }
        for (k, s) in &agg.connects.by_key {
            let destination = self.dest_budget.label(endpoint(k.daddr, k.dport));
            let process = self.process_budget.label(s.comm.clone());
            let netns = self.netns_budget.label(k.netns.to_string());
            let (pod, container) = pods.get(&k.tgid).cloned().unwrap_or_default();
            let (pod, container) = self.pod_labels(pod, container);
            for (r, n) in &s.results {
                self.connects
                    .get_or_create(&ConnectLabels {
                        netns: netns.clone(),
                        process: process.clone(),
                        pod: pod.clone(),
                        container: container.clone(),
                        destination: destination.clone(),
                        result: r.id(),
                    })
                    .inc_by(*n);
            }
            let h = self
                .connect_latency
                .get_or_create(&DestinationOnly { destination });
            observe_ns(&h, &s.handshake_ns);
        }
        for ((ns, kind), n) in &agg.drops {
            let netns = self.netns_budget.label(ns.to_string());
            self.conntrack
                .get_or_create(&CtLabels {
                    netns,
                    kind: kind.to_string(),
                })
                .inc_by(*n);
        }
        // Gauges of the tables seen now: a namespace gone is dropped with its series.
        self.ct_entries.clear();
        self.ct_max.clear();
        for (ns, c) in &agg.tier0_conntrack_tables {
            let l = NetnsOnly {
                netns: self.netns_budget.label(ns.to_string()),
            };
            // Namespaces folded into `other` add up (their counts; the limit is one value).
            self.ct_entries.get_or_create(&l).inc_by(c.count as i64);
            self.ct_max.get_or_create(&l).set(c.max as i64);
        }
        if let Some((cpu, rss)) = own_usage() {
            if cpu > self.last_cpu {
                self.cpu_seconds.inc_by(cpu - self.last_cpu);
                self.last_cpu = cpu;
            }
            self.rss_bytes.set(rss as i64);
        }
        for (family, now, before) in [
            ("listen", lost.listen, self.last_lost.listen),
            ("connect", lost.connect, self.last_lost.connect),
            ("drop", lost.drop, self.last_lost.drop),
            ("accept", lost.accept, self.last_lost.accept),
            ("missed_runs", lost.missed_runs, self.last_lost.missed_runs),
            ("unresolved", lost.unresolved, self.last_lost.unresolved),
        ] {
            self.lost
                .get_or_create(&FamilyLabel {
                    family: family.into(),
                })
                .inc_by(now.saturating_sub(before));
        }
        self.last_lost = lost;
        // Causes are a state, not a count: only the last interval's are present.
        self.causes.clear();
        for c in causes.iter().take(50) {
            self.causes
                .get_or_create(&CauseLabels {
                    cause: c.finding.cause.to_string(),
                    place: WhereLabel {
                        r#where: c.place.clone(),
                    },
                })
                .set(1);
        }
        let folded = self.listeners_budget.folded.len()
            + self.dest_budget.folded.len()
            + self.process_budget.folded.len()
            + self.netns_budget.folded.len()
            + self.pod_budget.folded.len();
        self.folded_labels.set(folded as i64);
        if let Ok(now) = SystemTime::now().duration_since(UNIX_EPOCH) {
            self.last_update.set(now.as_secs_f64());
        }
    }

    /// A listener's owner as bounded labels (the last one known: an interval whose lookup came
    /// back empty keeps the listener's series).
    fn owner_labels(&mut self, netns: u32, port: u16) -> Owner {
        let o = self
            .known_owners
            .get(&(netns, port))
            .cloned()
            .unwrap_or_default();
        let (pod, container) = self.pod_labels(o.pod, o.container);
        Owner {
            process: self.process_budget.label(o.process),
            pod,
            container,
        }
    }

    /// Pod and container as bounded labels: empty stays empty (the host); past the bound both
    /// become `other`.
    fn pod_labels(&mut self, pod: String, container: String) -> (String, String) {
        if pod.is_empty() && container.is_empty() {
            return (pod, container);
        }
        let key = format!("{pod}\u{0}{container}");
        if self.pod_budget.label(key) == OTHER {
            (OTHER.to_string(), OTHER.to_string())
        } else {
            (pod, container)
        }
    }
}
