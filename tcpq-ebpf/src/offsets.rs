//! Read-only globals set by userspace at load time (`EbpfLoader::override_global`).
//! Offsets come from /sys/kernel/btf/vmlinux; tracepoint field offsets from tracefs `format`.
//!
//! Plain `u32` statics read with a volatile load, rather than `aya_ebpf::Global<T>`: the latter
//! emits a `MaybeUninit<u32>` BTF name that this kernel's BTF loader rejects (EINVAL).

/// A read-only global the loader overrides; `load()` stops the compiler from constant-folding 0.
#[repr(transparent)]
pub struct Knob(u32);

impl Knob {
    #[inline(always)]
    pub fn load(&'static self) -> u32 {
        // SAFETY: reading a static u32; volatile so the loader-patched value is used.
        unsafe { core::ptr::read_volatile(&self.0) }
    }
}

macro_rules! offsets {
    ($($name:ident),* $(,)?) => {
        $(
            #[unsafe(no_mangle)]
            pub static $name: Knob = Knob(0);
        )*
    };
}

offsets!(
    // struct sock / sock_common
    OFF_SK_STATE,
    OFF_SK_FAMILY,
    OFF_SK_NET,
    OFF_SK_COOKIE,
    OFF_SK_NUM,
    OFF_SK_DPORT,
    OFF_SK_RCV_SADDR,
    OFF_SK_DADDR,
    OFF_SK_V6_RCV_SADDR,
    OFF_SK_V6_DADDR,
    OFF_SK_ACK_BACKLOG,
    OFF_SK_MAX_ACK_BACKLOG,
    OFF_SK_PROTOCOL,
    OFF_SK_ERR,
    // sock.sk_drops, bumped by tcp_listendrop() for every listen drop. Set only on kernels
    // without SKB_DROP_REASON_TCP_LISTEN_OVERFLOW (0 otherwise: not read): a final ACK freed
    // unlabelled there counts as an overflow only if it moved while the ACK was processed.
    OFF_SK_DROPS,
    OFF_INET_SPORT,
    // inet_connection_sock.icsk_accept_queue.qlen
    OFF_ICSK_QLEN,
    // struct net
    OFF_NET_INUM,
    OFF_NET_SYNCOOKIES,
    OFF_NET_MAX_SYN_BACKLOG,
    OFF_NET_ABORT_ON_OVERFLOW,
    // struct sk_buff
    OFF_SKB_HEAD,
    OFF_SKB_NETWORK_HEADER,
    OFF_SKB_TRANSPORT_HEADER,
    OFF_SKB_SK,
    OFF_SKB_NFCT,
    OFF_SKB_DEV,
    // net_device.nd_net.net
    OFF_DEV_NET,
    // struct task_struct / nsproxy
    OFF_TASK_NSPROXY,
    OFF_NSPROXY_NET_NS,
    // fd → socket: task_struct.files → files_struct.fdt → fdtable.fd[fd] → file.private_data
    // (struct socket) → socket.sk
    OFF_TASK_FILES,
    OFF_FILES_FDT,
    OFF_FDT_FD,
    OFF_FDT_MAX_FDS,
    OFF_FILE_PRIVATE_DATA,
    OFF_SOCKET_SK,
    // tracepoint record fields (tracefs events/syscalls/*/format)
    TP_LISTEN_FD,
    TP_LISTEN_BACKLOG,
    TP_ACCEPT_RET,
    TP_ACCEPT_FD,
    TP_CONNECT_FD,
    TP_CONNECT_ADDR,
    TP_CONNECT_RET,
    // 1 when inet_csk_reqsk_queue_is_full() compares with >= (older kernels), 0 for >.
    REQQ_FULL_GE,
    // Only report listeners on this local port (0 = all).
    FILTER_LPORT,
    // enum skb_drop_reason value of SKB_DROP_REASON_TCP_LISTEN_OVERFLOW (0: unknown).
    RSN_LISTEN_OVERFLOW,
    // ... of SKB_DROP_REASON_NO_SOCKET (cookie_v4_check() failing to create the child).
    RSN_NO_SOCKET,
    // ... of SKB_DROP_REASON_NETFILTER_DROP.
    RSN_NETFILTER_DROP,
    // `enum sk_rst_reason` value of SK_RST_REASON_TCP_ABORT_ON_CLOSE (kernel >= 6.10; without
    // it userspace leaves the abort part out of RESET_HOOKS).
    RSN_ABORT_ON_CLOSE,
    // Confirm mode skips a packet whose listener's queues are all at least max(this, backlog/2)
    // below their limit (listen::far_from_limits); 0 follows every packet.
    NEAR_MARGIN,
    // Possible CPUs (/sys/devices/system/cpu/possible): bounds the scans of per-CPU slots.
    // A constant of the frozen .rodata, so the verifier explores only that many iterations.
    NR_CPUS,
    // Which families `state::sock_state` serves (tcpq_common::state_hooks bits).
    STATE_HOOKS,
    // Which families `state::skb_kfree` serves (tcpq_common::kfree_hooks bits).
    KFREE_HOOKS,
    // 1: accepts are counted per listener and process in ACCEPT_TOTALS (the live commands);
    // 0: one ACCEPT_EVENTS record each (`trace accept`). Failures are records either way.
    ACCEPT_AGGREGATE,
    // Which families `state::send_reset` serves (tcpq_common::reset_hooks bits).
    RESET_HOOKS,
);
