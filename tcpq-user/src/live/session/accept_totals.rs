//! The kernel's per-(listener, process) accept totals folded into an interval's accepts.
use std::{collections::BTreeMap, collections::HashMap, net::IpAddr};

use anyhow::Result;
use aya::maps::{HashMap as BpfHashMap, MapData};
use tcpq_common::{AcceptKey, AcceptTotals, names};

use super::MAX_ACCEPT_KEYS;
use crate::{
    family::accept::aggregate::AcceptStats, kernel::probe::Loaded, snapshot::procs, wire::addr,
};

/// The kernel's accept totals per (listener, process) (`ACCEPT_TOTALS`) and what was last read
/// of each: the live commands count accepts without a ring record each.
pub(super) struct AcceptTotalsReader {
    map: BpfHashMap<MapData, AcceptKey, AcceptTotals>,
    last: HashMap<AcceptKey, AcceptTotals>,
    comms: HashMap<u32, String>,
    /// The last fold found something new (the table may still move once after a disarm).
    moved: bool,
}

impl AcceptTotalsReader {
    pub(super) fn open(loaded: &mut Loaded) -> Result<Self> {
        let map = loaded
            .ebpf
            .take_map(names::ACCEPT_TOTALS)
            .ok_or_else(|| anyhow::anyhow!("kernel object has no map {}", names::ACCEPT_TOTALS))?;
        Ok(Self {
            map: BpfHashMap::try_from(map)
                .map_err(|e| anyhow::anyhow!("open {}: {e}", names::ACCEPT_TOTALS))?,
            last: HashMap::new(),
            comms: HashMap::new(),
            moved: false,
        })
    }

    /// Adds each key's growth since the last fold to `accepts` (a map walk: two syscalls per
    /// key, so only while the accept programs run or the table moved last time). Keys of
    /// processes that exited leave the kernel's table once read to the end.
    pub(super) fn fold(
        &mut self,
        attached: bool,
        accepts: &mut BTreeMap<(u32, IpAddr, u16), AcceptStats>,
        evicted: &mut u64,
    ) {
        if !attached && !self.moved {
            return;
        }
        self.moved = false;
        if self.comms.len() > 4096 {
            self.comms.clear();
        }
        let keys: Vec<AcceptKey> = self.map.keys().filter_map(Result::ok).collect();
        for key in keys {
            let Ok(now) = self.map.get(&key, 0) else {
                continue;
            };
            let before = self.last.get(&key).copied().unwrap_or_default();
            if now.accepts == before.accepts {
                if !procs::alive(key.tgid) {
                    let _ = self.map.remove(&key);
                    self.last.remove(&key);
                }
                continue;
            }
            self.moved = true;
            let id = (key.netns, addr(key.family, &key.laddr), key.lport);
            let comms = &mut self.comms;
            let comm = || {
                comms
                    .entry(key.tgid)
                    .or_insert_with(|| procs::comm(key.tgid).unwrap_or_else(|| "?".into()))
                    .clone()
            };
            if let Some(stats) = accepts.get_mut(&id) {
                stats.add_totals(key.tgid, comm, &before, &now);
            } else if accepts.len() < MAX_ACCEPT_KEYS {
                accepts
                    .entry(id)
                    .or_default()
                    .add_totals(key.tgid, comm, &before, &now);
            } else {
                *evicted += 1;
            }
            self.last.insert(key, now);
        }
    }
}
