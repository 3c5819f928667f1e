//! Accept side: how long each connection waited in the accept queue (child ESTABLISHED →
//! accept() returning it), accept() failures by errno, and which threads sit in accept().
//!
//! `maps`: its maps; `queue`: when each child was queued; `syscall`: accept() entry and exit
//! (the records); `totals`: accepts counted in the kernel instead; `abort`: connections closed
//! with data unread.
mod abort;
mod maps;
mod queue;
mod syscall;
mod totals;

pub use abort::on_abort_close;
pub use queue::on_state;

// Socket states and errnos the family compares with (the kernel's values).
pub(super) const TCP_ESTABLISHED: i32 = 1;
pub(super) const TCP_SYN_RECV: i32 = 3;
pub(super) const EAGAIN: i64 = 11;
pub(super) const EINTR: i64 = 4;
pub(super) const ERESTARTSYS: i64 = 512;
