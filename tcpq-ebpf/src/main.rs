//! tcpq kernel programs. One module per hook family; every program is a thin wrapper around a
//! `try_…` helper. Kernel struct field offsets are never hard-coded: userspace resolves them from
//! the running kernel's BTF and writes them into the read-only globals in `offsets` before load.
#![no_std]
#![no_main]

mod accept;
mod connect;
mod drop;
mod listen;
mod offsets;
mod shared;
mod state;

#[cfg(not(test))]
#[panic_handler]
fn panic(_info: &core::panic::PanicInfo) -> ! {
    loop {}
}

#[unsafe(link_section = "license")]
#[unsafe(no_mangle)]
static LICENSE: [u8; 4] = *b"GPL\0";
