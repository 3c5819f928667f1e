//! Who started a socket's handshake: the connect family's record of it, read by the drop
//! family for packets sent from a timer (softirq: the current task is whoever was interrupted).
/// The process that started the handshake of `sk` (while it is in SYN_SENT).
#[inline(always)]
pub fn handshake_owner(sk: u64) -> Option<(u32, [u8; 16])> {
    crate::connect::SYN_START.get_ptr(sk).map(|hs| {
        // SAFETY: map value pointer, copied out at once.
        let ev = unsafe { (*hs).ev };
        (ev.tgid, ev.comm)
    })
}
