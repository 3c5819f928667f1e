//! cgroup_skb ingress: SYN / ACK / SYNQ / COOKIE, judged (or recorded for confirmation) just
//! before the kernel's own queue tests.
use aya_ebpf::EbpfContext as _;
use aya_ebpf::bindings::{__sk_buff, bpf_sock};
use aya_ebpf::helpers::bpf_ktime_get_ns;
use aya_ebpf::helpers::generated::{bpf_get_socket_cookie, bpf_skc_to_tcp_sock};
use aya_ebpf::macros::cgroup_skb;
use aya_ebpf::programs::SkBuffContext;
use tcpq_common::{ListenEvent, kind, lost};

use super::maps::{LISTEN_COUNTS, LISTEN_HOT_PORT, PENDING, Pending};
use super::outcome::settle_unfinished;
use super::pending::{confirm_mode, jiffies};
use super::queues::{far_from_limits, fill_queues, listen_drops, reqq_full};
use super::report::{bump, emit};
use super::{AF_INET, AF_INET6, IPPROTO_TCP, TCP_LISTEN, TH_ACK, TH_FIN, TH_RST, TH_SYN};
use crate::offsets::*;
use crate::shared::read::kread;

#[cgroup_skb(ingress)]
pub fn listen_ingress(ctx: SkBuffContext) -> i32 {
    let _ = try_listen_ingress(&ctx);
    1 // always allow: tcpq observes, it never drops
}

fn try_listen_ingress(ctx: &SkBuffContext) -> Result<(), i64> {
    // SAFETY: ctx.skb.skb is the program's __sk_buff context pointer.
    let skb: *mut __sk_buff = ctx.skb.skb;
    // SAFETY: reading the `sk` member of the context; the verifier rewrites this access.
    let sk: *mut bpf_sock = unsafe { (*skb).__bindgen_anon_2.sk };
    if sk.is_null() {
        return Ok(());
    }
    // SAFETY: `state` is readable on any sock_common pointer (bpf_sock_common_is_valid_access).
    if unsafe { (*sk).state } != TCP_LISTEN {
        return Ok(()); // the common case: not a listener, leave as fast as possible
    }

    // Packet data starts at the network header for cgroup_skb.
    let b0: u8 = ctx.load(0)?;
    let mut ev = ListenEvent::default();
    let l4: usize;
    match b0 >> 4 {
        4 => {
            let proto: u8 = ctx.load(9)?;
            if proto != IPPROTO_TCP {
                return Ok(());
            }
            l4 = ((b0 & 0x0f) as usize) * 4;
            ev.header.family = AF_INET;
            let src: [u8; 4] = ctx.load(12)?;
            let dst: [u8; 4] = ctx.load(16)?;
            ev.raddr[..4].copy_from_slice(&src);
            ev.laddr[..4].copy_from_slice(&dst);
        }
        6 => {
            let next: u8 = ctx.load(6)?;
            if next != IPPROTO_TCP {
                return Ok(()); // extension headers: not worth the cost here
            }
            l4 = 40;
            ev.header.family = AF_INET6;
            ev.raddr = ctx.load(8)?;
            ev.laddr = ctx.load(24)?;
        }
        _ => return Ok(()),
    }
    let ports: [u8; 4] = ctx.load(l4)?;
    let flags: u8 = ctx.load(l4 + 13)?;
    ev.rport = u16::from_be_bytes([ports[0], ports[1]]);
    ev.lport = u16::from_be_bytes([ports[2], ports[3]]);
    let filter = FILTER_LPORT.load();
    if filter != 0 && filter != ev.lport as u32 {
        return Ok(());
    }

    let is_syn = flags & (TH_SYN | TH_ACK | TH_RST) == TH_SYN;
    // A final handshake ACK, or data/FIN riding on it, completes a request socket.
    let is_ack = flags & (TH_SYN | TH_RST) == 0 && flags & TH_ACK != 0;
    let _ = TH_FIN;
    if !is_syn && !is_ack {
        return Ok(());
    }

    // SAFETY: helper returns NULL unless sk is a TCP socket; the result is only used as an address.
    let tp = unsafe { bpf_skc_to_tcp_sock(sk as *mut _) } as u64;
    if tp == 0 {
        return Ok(());
    }
    fill_queues(&mut ev, tp);
    // sk_acceptq_is_full(): sk_ack_backlog > sk_max_ack_backlog
    let acceptq_full = ev.queue > ev.backlog;

    let net: u64 = kread(tp, OFF_SK_NET.load());
    let syncookies: u8 = kread(net, OFF_NET_SYNCOOKIES.load());
    let reqq_full = reqq_full(&ev);

    let confirm = confirm_mode();
    if confirm && far_from_limits(&ev, syncookies) {
        bump(&LISTEN_COUNTS, kind::FAR_FROM_LIMITS as u32);
        return Ok(());
    }
    // sock_net(sk)->ns.inum, read only now: the packets skipped above never need it.
    ev.header.netns = kread(net, OFF_NET_INUM.load());

    if confirm {
        // Record the packet; the verdict comes from what the kernel then does with it.
        // SAFETY: as in `listen_ingress`: the socket cookie of skb->sk (the listener).
        ev.cookie = unsafe { bpf_get_socket_cookie(ctx.as_ptr()) };
        ev.header.kind = if is_syn {
            kind::SYN_DROP
        } else {
            kind::ACK_DROP
        };
        // SAFETY: no arguments.
        let now = unsafe { bpf_ktime_get_ns() };
        let rec = Pending {
            active: 1,
            is_syn: is_syn as u32,
            synack: 0,
            child: 0,
            syncookies: syncookies as u32,
            reqq_full: reqq_full as u32,
            acceptq_full: acceptq_full as u32,
            max_syn_backlog: if syncookies == 0 {
                kread(net, OFF_NET_MAX_SYN_BACKLOG.load())
            } else {
                0
            },
            drops: if is_ack { listen_drops(tp) } else { 0 },
            _pad: 0,
            sk: tp,
            rec_ns: now,
            ev,
        };
        if let Some(hot) = LISTEN_HOT_PORT.get_ptr_mut(0) {
            // SAFETY: array slot; written only when it changes (no cache-line ping-pong).
            unsafe {
                if *hot != ev.lport as u64 {
                    *hot = ev.lport as u64;
                }
            }
        }
        if let Some(last) = LISTEN_HOT_PORT.get_ptr_mut(1) {
            let jiffy = jiffies();
            // SAFETY: array slot; a racing writer stores the same or the previous jiffy.
            unsafe {
                if *last != jiffy {
                    *last = jiffy;
                }
            }
        }
        // No special case for a listener owned by a process (sock_owned_by_user()): since
        // Linux 4.4 tcp_v4_rcv()/tcp_v6_rcv() hand a LISTEN socket's packets to
        // tcp_v*_do_rcv() at once, without the socket lock ("listeners are lockless"), so the
        // packet is decided on this CPU now like any other.
        if let Some(p) = PENDING.get_ptr_mut(0) {
            // SAFETY: this CPU's slot; softirq packet processing does not nest on one CPU.
            let p = unsafe { &mut *p };
            if p.active != 0 {
                settle_unfinished(p, now);
            }
            *p = rec;
        }
        return Ok(());
    }

    let k = if is_syn {
        // tcp_conn_request(): the request-queue test comes first, then the accept-queue test.
        if syncookies == 2 || reqq_full {
            if syncookies == 0 {
                kind::SYNQ_DROP
            } else if acceptq_full {
                kind::SYN_DROP
            } else {
                kind::COOKIE
            }
        } else if acceptq_full {
            kind::SYN_DROP
        } else {
            return Ok(());
        }
    } else if acceptq_full {
        kind::ACK_DROP
    } else {
        return Ok(());
    };

    ev.header.kind = k;
    // SAFETY: the context pointer is valid for the helper; skb->sk is the listener here.
    ev.cookie = unsafe { bpf_get_socket_cookie(ctx.as_ptr()) };
    // SAFETY: no arguments.
    ev.header.ts_ns = unsafe { bpf_ktime_get_ns() };
    bump(&LISTEN_COUNTS, k as u32);
    emit(&ev, lost::LISTEN_INGRESS);
    Ok(())
}
