//! One home per hook family: each decodes its ring records (`decode`), folds them per key
//! (`aggregate`), turns evidence into findings (`diagnose`) and renders its own lines
//! (`render`), where it has such code. Families import `snapshot`, `diagnosis`, `wire` and
//! `render`, never each other or `cmd`/`live`.
pub mod accept;
pub mod connect;
pub mod conntrack;
pub mod listen;
pub mod sockets;
