//! Arming and disarming a family's standby programs (tier 2 of the live commands): attached
//! while the family is armed, detached after, in the order their records need.
use std::collections::HashMap;

use aya::maps::{Array, MapData};
use tcpq_common::names;

use super::{
    hooks::{Attach, Family},
    link::{LinkHandle, link_loaded, unlink, write_armed_parts},
    loaded::Loaded,
    status::HookState,
};

impl Loaded {
    /// Attaches every standby program of `family` (tier 2). The listen family's ingress hook
    /// comes last: a packet it records must find the outcome hooks already in place (else its
    /// record is left unresolved). Returns the programs attached; a program the kernel refuses
    /// now is marked unavailable and reported, not fatal.
    pub fn arm(&mut self, family: Family) -> Vec<String> {
        let mut order: Vec<usize> = (0..self.hooks.len())
            .filter(|&i| {
                self.hooks[i].spec.family == family
                    && matches!(self.hooks[i].state, HookState::Standby)
            })
            .collect();
        order.sort_by_key(|&i| matches!(self.hooks[i].spec.attach, Attach::CgroupSkbIngress));
        let mut problems = Vec::new();
        if family == Family::Accept
            && let Err(why) = self.mark_enqueue_since()
        {
            problems.push(why);
        }
        for i in order {
            let spec = self.hooks[i].effective();
            let running = self.armed_links.contains_key(spec.program)
                || self.hooks.iter().enumerate().any(|(j, h)| {
                    j != i
                        && h.via.is_some()
                        && h.program() == spec.program
                        && matches!(h.state, HookState::Attached)
                });
            if running {
                // Its program already runs for another hook of the family.
                self.hooks[i].state = HookState::Attached;
                continue;
            }
            let linked = match spec.attach {
                Attach::Part(d, bit) => self
                    .write_armed(d.slot, self.armed(d.slot) | bit)
                    .map(|_| LinkHandle::Part(d.slot, bit)),
                _ => link_loaded(&mut self.ebpf, &spec, self.cgroup.as_ref()),
            };
            match linked {
                Ok(handle) => {
                    self.armed_links.insert(spec.program, handle);
                    self.hooks[i].state = HookState::Attached;
                }
                Err(why) => {
                    problems.push(format!("{}: {why}", spec.program));
                    self.hooks[i].state = HookState::Unavailable(why);
                }
            }
        }
        problems
    }

    /// Detaches what `arm(family)` attached, the listen ingress hook first (its records'
    /// outcomes still arrive while the outcome hooks stay a moment longer).
    pub fn disarm(&mut self, family: Family) {
        let mut order: Vec<usize> = (0..self.hooks.len())
            .filter(|&i| {
                self.hooks[i].spec.family == family
                    && self.armed_links.contains_key(self.hooks[i].program())
            })
            .collect();
        order.sort_by_key(|&i| !matches!(self.hooks[i].spec.attach, Attach::CgroupSkbIngress));
        let mut results: HashMap<&'static str, Result<(), String>> = HashMap::new();
        for i in order {
            let program = self.hooks[i].program();
            let result = match results.get(program) {
                Some(done) => done.clone(), // one link served two hooks
                None => {
                    let result = match self.armed_links.remove(program) {
                        Some(LinkHandle::Part(slot, bit)) => {
                            self.write_armed(slot, self.armed(slot) & !bit)
                        }
                        Some(other) => unlink(&mut self.ebpf, program, other),
                        None => Ok(()),
                    };
                    results.insert(program, result.clone());
                    result
                }
            };
            self.hooks[i].state = match result {
                Ok(()) => HookState::Standby,
                // The link stays until the process exits (its fd is closed then).
                Err(why) => HookState::Unavailable(format!("detach failed: {why}")),
            };
        }
    }

    /// Whether `family` has standby programs (it can be armed).
    pub fn armable(&self, family: Family) -> bool {
        self.hooks.iter().any(|h| {
            h.spec.family == family
                && (matches!(h.state, HookState::Standby)
                    || self.armed_links.contains_key(h.program()))
        })
    }

    /// Empties a hash map keyed by socket pointer (u64) whose values are `V` bytes: state a
    /// disarmed part no longer keeps current (its socket-close cleanup stops with it).
    pub fn clear_socket_map<const V: usize>(&mut self, name: &str) {
        let Some(map) = self.ebpf.map_mut(name) else {
            return;
        };
        let Ok(mut m) = aya::maps::HashMap::<&mut MapData, u64, [u8; V]>::try_from(map) else {
            return;
        };
        let keys: Vec<u64> = m.keys().filter_map(Result::ok).collect();
        for k in keys {
            let _ = m.remove(&k);
        }
    }

    /// Queue times recorded before now are stale from here on (children queued while the
    /// accept family was disarmed were not recorded; their socket addresses may be reused).
    fn mark_enqueue_since(&mut self) -> Result<(), String> {
        let map = self
            .ebpf
            .map_mut(names::ENQUEUE_SINCE)
            .ok_or_else(|| format!("kernel object has no map {}", names::ENQUEUE_SINCE))?;
        let mut since: Array<&mut MapData, u64> =
            Array::try_from(map).map_err(|e| format!("open {}: {e}", names::ENQUEUE_SINCE))?;
        since
            .set(0, crate::kernel::ktime_ns(), 0)
            .map_err(|e| format!("write {}: {e}", names::ENQUEUE_SINCE))
    }

    fn armed(&self, slot: u32) -> u32 {
        self.armed_parts.get(slot as usize).copied().unwrap_or(0)
    }

    fn write_armed(&mut self, slot: u32, bits: u32) -> Result<(), String> {
        write_armed_parts(&mut self.ebpf, slot, bits)?;
        if let Some(b) = self.armed_parts.get_mut(slot as usize) {
            *b = bits;
        }
        Ok(())
    }
}
