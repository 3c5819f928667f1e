//! Connections a process closed with data unread (`tcp:tcp_send_reset`, TCPAbortOnClose).
use aya_ebpf::helpers::{bpf_get_current_comm, bpf_get_current_pid_tgid};
use tcpq_common::{AbortKey, AbortTally};

use super::maps::ABORTS_ON_CLOSE;
use crate::offsets::*;
use crate::shared::read::{kread, sk_netns};

/// `tcp:tcp_send_reset` (via `state::send_reset`) with SK_RST_REASON_TCP_ABORT_ON_CLOSE:
/// `__tcp_close()` found unread data in the receive queue, counted LINUX_MIB_TCPABORTONCLOSE,
/// set TCP_CLOSE and called tcp_send_active_reset(). It runs in the closing task (close(2) or
/// its exit), so the current tgid is the process that dropped the connection — for a server at
/// its connection limit, the worker that accepted it and closed it unread ("worker_connections
/// are not enough"). The local port of an accepted socket is its listener's: read from
/// `inet_sport` (network order), since tcp_set_state(TCP_CLOSE) → inet_put_port() has already
/// zeroed `inet_num`.
#[inline(never)]
pub fn on_abort_close(sk: u64) {
    let tgid = (bpf_get_current_pid_tgid() >> 32) as u32;
    let sport: u16 = kread(sk, OFF_INET_SPORT.load());
    let key = AbortKey {
        netns: sk_netns(sk),
        tgid,
        lport: u16::from_be(sport),
        family: kread(sk, OFF_SK_FAMILY.load()),
        _pad: 0,
    };
    if let Some(t) = ABORTS_ON_CLOSE.get_ptr_mut(&key) {
        // SAFETY: a valid per-CPU map value of this CPU; no other CPU writes it.
        unsafe { (*t).count += 1 };
        return;
    }
    let tally = AbortTally {
        count: 1,
        comm: bpf_get_current_comm().unwrap_or_default(),
    };
    let _ = ABORTS_ON_CLOSE.insert(&key, &tally, 0);
}
