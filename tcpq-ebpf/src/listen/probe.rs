//! Capability probe only: never attached for data. `tcpq check` loads it to report whether this
//! kernel accepts fentry programs (lockdown kernels refuse them with EPERM).

#[aya_ebpf::macros::fentry(function = "tcp_conn_request")]
pub fn fentry_probe(_ctx: aya_ebpf::programs::FEntryContext) -> u32 {
    0
}
