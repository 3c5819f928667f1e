//! The identity of every pid an output names, resolved while the process is alive and kept
//! for later lines and summaries (`Identities`, the per-pid cache of the trace commands).
use std::{
    collections::HashMap,
    rc::Rc,
    time::{Duration, Instant},
};

use super::identity::Identity;

/// What a look at /proc found for a pid.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum CgroupLookup {
    /// The process is gone (its last identity stays valid: the pid is not reused yet).
    Gone,
    /// Its cgroup path, None for the root.
    Path(Option<String>),
}

/// The cgroup of a live process, or that it is gone.
pub fn cgroup_lookup(pid: u32) -> CgroupLookup {
    match crate::snapshot::procs::cgroup_path(pid) {
        Some(p) => CgroupLookup::Path(Some(p)),
        None if std::path::Path::new(&format!("/proc/{pid}")).exists() => CgroupLookup::Path(None),
        None => CgroupLookup::Gone,
    }
}

/// Host identities share one allocation.
fn shared(host: &Rc<Identity>, id: Identity) -> Rc<Identity> {
    if id == **host {
        Rc::clone(host)
    } else {
        Rc::new(id)
    }
}

#[derive(Debug)]
struct Known {
    comm: String,
    cgroup: Option<String>,
    checked: Instant,
    id: Rc<Identity>,
}

/// The identity of every pid an output names, resolved at the pid's first sighting (while the
/// process is alive) and kept for later lines and summaries, when it may be gone. Looked at
/// again when the pid shows another comm (reused, or exec'd) or once `recheck` has passed (a
/// pid reused under the same comm; the cgroup path is read again and the runtime's state only
/// when it changed). Bounded: past `max` pids the older half is forgotten.
#[derive(Debug)]
pub struct Identities {
    by_pid: HashMap<u32, Known>,
    host: Rc<Identity>,
    max: usize,
    recheck: Duration,
}

impl Default for Identities {
    fn default() -> Self {
        Self::new()
    }
}

impl Identities {
    pub const MAX_PIDS: usize = 8192;
    pub const RECHECK: Duration = Duration::from_secs(10);

    pub fn new() -> Self {
        Self::with_limits(Self::MAX_PIDS, Self::RECHECK)
    }

    pub fn with_limits(max: usize, recheck: Duration) -> Self {
        Self {
            by_pid: HashMap::new(),
            host: Rc::new(Identity::default()),
            max: max.max(2),
            recheck,
        }
    }

    /// The identity of `pid` (0: unknown, the host's), which showed `comm`.
    pub fn get(&mut self, pid: u32, comm: &str) -> Rc<Identity> {
        self.get_with(
            pid,
            comm,
            Instant::now(),
            cgroup_lookup,
            Identity::of_cgroup,
        )
    }

    /// `get` with the clock and the two reads given (unit tests).
    pub fn get_with(
        &mut self,
        pid: u32,
        comm: &str,
        now: Instant,
        lookup: impl FnOnce(u32) -> CgroupLookup,
        resolve: impl FnOnce(Option<&str>) -> Identity,
    ) -> Rc<Identity> {
        if pid == 0 {
            return Rc::clone(&self.host);
        }
        if let Some(k) = self.by_pid.get_mut(&pid) {
            let same = k.comm == comm;
            if same && now.saturating_duration_since(k.checked) < self.recheck {
                return Rc::clone(&k.id);
            }
            match lookup(pid) {
                CgroupLookup::Gone => {}
                CgroupLookup::Path(cg) if cg == k.cgroup => {}
                CgroupLookup::Path(cg) => {
                    k.id = shared(&self.host, resolve(cg.as_deref()));
                    k.cgroup = cg;
                }
            }
            if !same {
                k.comm.clear();
                k.comm.push_str(comm);
            }
            k.checked = now;
            return Rc::clone(&k.id);
        }
        let cgroup = match lookup(pid) {
            CgroupLookup::Path(cg) => cg,
            CgroupLookup::Gone => None,
        };
        let id = shared(&self.host, resolve(cgroup.as_deref()));
        if self.by_pid.len() >= self.max {
            self.forget_older_half();
        }
        self.by_pid.insert(
            pid,
            Known {
                comm: comm.to_string(),
                cgroup,
                checked: now,
                id: Rc::clone(&id),
            },
        );
        id
    }

    fn forget_older_half(&mut self) {
        let mut ages: Vec<Instant> = self.by_pid.values().map(|k| k.checked).collect();
        let mid = ages.len() / 2;
        let (_, cut, _) = ages.select_nth_unstable(mid);
        let cut = *cut;
        self.by_pid.retain(|_, k| k.checked > cut);
    }

    pub fn len(&self) -> usize {
        self.by_pid.len()
    }

    pub fn is_empty(&self) -> bool {
        self.by_pid.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::snapshot::container::tests::{ID, UID};

    #[test]
    fn identities_are_resolved_once_per_pid_and_again_when_it_is_reused() {
        let t0 = Instant::now();
        let pod = format!("/kubepods/pod{UID}/{ID}");
        let mut ids = Identities::with_limits(4, Duration::from_secs(10));
        let reads = std::cell::Cell::new(0);
        let resolve = |cg: Option<&str>| {
            reads.set(reads.get() + 1);
            Identity::of_cgroup(cg)
        };
        let path = |p: &str| {
            let p = p.to_string();
            move |_| CgroupLookup::Path(Some(p))
        };
        let a = ids.get_with(7, "php-fpm", t0, path(&pod), resolve);
        assert_eq!(a.pod, Some(format!("pod {UID}")));
        assert_eq!(reads.get(), 1);
        // Same pid and comm within the recheck interval: no /proc read at all.
        let again = ids.get_with(7, "php-fpm", t0, |_| unreachable!(), resolve);
        assert!(Rc::ptr_eq(&a, &again));
        // Gone later: the identity it had stays (its lines and summaries still name the pod).
        let gone = ids.get_with(
            7,
            "php-fpm",
            t0 + Duration::from_secs(11),
            |_| CgroupLookup::Gone,
            resolve,
        );
        assert!(Rc::ptr_eq(&a, &gone));
        assert_eq!(reads.get(), 1);
        // Reused by a host process (another comm): looked at again.
        let host = ids.get_with(7, "bash", t0, |_| CgroupLookup::Path(None), resolve);
        assert_eq!(*host, Identity::default());
        // Checked again after the interval, same cgroup: the runtime's state is not reread.
        let b = ids.get_with(8, "nginx", t0, path(&pod), resolve);
        let n = reads.get();
        let b2 = ids.get_with(
            8,
            "nginx",
            t0 + Duration::from_secs(30),
            path(&pod),
            resolve,
        );
        assert!(Rc::ptr_eq(&b, &b2));
        assert_eq!(reads.get(), n);
        // pid 0 (unknown) is the host's, without a look.
        assert_eq!(
            *ids.get_with(0, "", t0, |_| unreachable!(), resolve),
            Identity::default()
        );
        // Bounded: past 4 pids the older half goes.
        for (i, pid) in (100..110).enumerate() {
            ids.get_with(
                pid,
                "x",
                t0 + Duration::from_secs(60 + i as u64),
                |_| CgroupLookup::Path(None),
                resolve,
            );
            assert!(ids.len() <= 4, "{}", ids.len());
        }
        assert!(!ids.is_empty());
    }
}
