//! Small helpers to read kernel memory at runtime-resolved offsets.
use aya_ebpf::helpers::bpf_probe_read_kernel;

/// Reads a `T` at `base + off` from kernel memory; zero on failure (a torn read is harmless:
/// every value read here is informational or re-checked).
#[inline(always)]
pub fn kread<T: Copy + Default>(base: u64, off: u32) -> T {
    if base == 0 {
        return T::default();
    }
    // SAFETY: bpf_probe_read_kernel validates the address and fails cleanly on a bad one.
    unsafe { bpf_probe_read_kernel((base + off as u64) as *const T) }.unwrap_or_default()
}

/// Reads a 16-byte address field (IPv6) at `base + off`.
#[inline(always)]
pub fn kread_addr16(base: u64, off: u32) -> [u8; 16] {
    if base == 0 {
        return [0; 16];
    }
    // SAFETY: as in `kread`.
    unsafe { bpf_probe_read_kernel((base + off as u64) as *const [u8; 16]) }.unwrap_or([0; 16])
}

/// Network namespace inode of a socket: `sock_net(sk)->ns.inum`.
#[inline(always)]
pub fn sk_netns(sk: u64) -> u32 {
    let net: u64 = kread(sk, crate::offsets::OFF_SK_NET.load());
    kread(net, crate::offsets::OFF_NET_INUM.load())
}

/// Reads `N` bytes at `base + off` (zeros on failure).
#[inline(always)]
pub fn kread_bytes<const N: usize>(base: u64, off: u32) -> [u8; N] {
    if base == 0 {
        return [0; N];
    }
    // SAFETY: as in `kread`.
    unsafe { bpf_probe_read_kernel((base + off as u64) as *const [u8; N]) }.unwrap_or([0; N])
}
