//! What a socket or a descriptor tells: its addresses, its protocol, the socket behind an fd.
use aya_ebpf::helpers::bpf_get_current_task;

use crate::{
    offsets::*,
    shared::read::{kread, kread_addr16},
};

const AF_INET6: u16 = 10;
const IPPROTO_TCP: u16 = 6;

/// (family, local address, remote address) of a sock_common; IPv4 in the first 4 bytes.
#[inline(always)]
pub fn sk_addrs(skc: u64) -> (u16, [u8; 16], [u8; 16]) {
    let family: u16 = kread(skc, OFF_SK_FAMILY.load());
    if family == AF_INET6 {
        return (
            family,
            kread_addr16(skc, OFF_SK_V6_RCV_SADDR.load()),
            kread_addr16(skc, OFF_SK_V6_DADDR.load()),
        );
    }
    let (mut l, mut r) = ([0u8; 16], [0u8; 16]);
    l[..4].copy_from_slice(&kread::<[u8; 4]>(skc, OFF_SK_RCV_SADDR.load()));
    r[..4].copy_from_slice(&kread::<[u8; 4]>(skc, OFF_SK_DADDR.load()));
    (family, l, r)
}

#[inline(always)]
/// Whether `sk` is a TCP socket (`sk_protocol`).
pub fn is_tcp(sk: u64) -> bool {
    let proto: u16 = kread(sk, OFF_SK_PROTOCOL.load());
    proto == IPPROTO_TCP
}

/// Network namespace inode of the current task: `current->nsproxy->net_ns->ns.inum`.
#[inline(always)]
pub fn current_netns() -> u32 {
    // SAFETY: no arguments; the result is only used as an address for probe reads.
    let task = unsafe { bpf_get_current_task() };
    let nsproxy: u64 = kread(task, OFF_TASK_NSPROXY.load());
    let net: u64 = kread(nsproxy, OFF_NSPROXY_NET_NS.load());
    kread(net, OFF_NET_INUM.load())
}

/// The `struct sock` behind descriptor `fd` of the current task (0 if it cannot be read).
#[inline(always)]
pub fn fd_to_sk(fd: u64) -> u64 {
    // SAFETY: no arguments; used only as an address for probe reads.
    let task = unsafe { bpf_get_current_task() };
    let files: u64 = kread(task, OFF_TASK_FILES.load());
    let fdt: u64 = kread(files, OFF_FILES_FDT.load());
    let max: u32 = kread(fdt, OFF_FDT_MAX_FDS.load());
    if fd >= max as u64 {
        return 0;
    }
    let fds: u64 = kread(fdt, OFF_FDT_FD.load());
    if fds == 0 {
        return 0;
    }
    let file: u64 = kread(fds + fd * 8, 0);
    let socket: u64 = kread(file, OFF_FILE_PRIVATE_DATA.load());
    kread(socket, OFF_SOCKET_SK.load())
}
