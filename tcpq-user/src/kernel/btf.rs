//! Kernel struct field offsets from the running kernel's BTF. aya's Rust programs have no CO-RE
//! relocations, so every offset the programs use is resolved here and passed as a global.
use std::path::Path;

use anyhow::{Context as _, Result, anyhow, bail};
use btf_rs::{Btf, BtfType as _, Type};

pub struct KernelBtf {
    btf: Btf,
}

impl KernelBtf {
    pub fn load(path: &Path) -> Result<Self> {
        if !path.exists() {
            bail!(
                "kernel BTF not found at {} (needed to resolve struct offsets): use a kernel built with CONFIG_DEBUG_INFO_BTF=y",
                path.display()
            );
        }
        // Mapping the file avoids parsing all ~100k types at start-up (a third of it); sysfs
        // files that cannot be mapped (older kernels) are parsed instead.
        let btf = Btf::from_file_with_backend(path, btf_rs::Backend::Mmap)
            .or_else(|_| Btf::from_file(path))
            .map_err(|e| anyhow!("parse kernel BTF {}: {e}", path.display()))?;
        Ok(Self { btf })
    }

    fn struct_by_name(&self, name: &str) -> Result<Type> {
        let types = self
            .btf
            .resolve_types_by_name(name)
            .map_err(|e| anyhow!("BTF has no type `{name}`: {e}"))?;
        types
            .into_iter()
            .find(|t| matches!(t, Type::Struct(_) | Type::Union(_)))
            .ok_or_else(|| anyhow!("BTF has no struct `{name}`"))
    }

    /// Follows typedef/const/volatile/type-tag chains to the underlying type.
    fn strip(&self, mut t: Type) -> Result<Type> {
        for _ in 0..16 {
            match &t {
                Type::Typedef(_)
                | Type::Volatile(_)
                | Type::Const(_)
                | Type::Restrict(_)
                | Type::TypeTag(_) => {
                    t = self
                        .btf
                        .resolve_chained_type(
                            t.as_btf_type().ok_or_else(|| anyhow!("bad BTF chain"))?,
                        )
                        .map_err(|e| anyhow!("BTF chain: {e}"))?;
                }
                _ => return Ok(t),
            }
        }
        bail!("BTF type chain too long")
    }

    /// Finds `field` in a struct/union, descending into anonymous members.
    /// Returns (bit offset, member type).
    fn find_member(&self, t: &Type, field: &str, depth: u32) -> Result<Option<(u32, Type)>> {
        let st = match t {
            Type::Struct(s) | Type::Union(s) => s,
            _ => return Ok(None),
        };
        for m in &st.members {
            let name = self.btf.resolve_name(m).unwrap_or_default();
            let mtype = self
                .btf
                .resolve_type_by_id(
                    m.get_type_id()
                        .ok_or_else(|| anyhow!("BTF member without a type"))?,
                )
                .map_err(|e| anyhow!("BTF member type: {e}"))?;
            if name == field {
                if m.bitfield_size().is_some_and(|s| s != 0) {
                    bail!("field `{field}` is a bitfield: cannot read it by byte offset");
                }
                return Ok(Some((m.bit_offset(), mtype)));
            }
            if name.is_empty() && depth < 8 {
                let inner = self.strip(mtype)?;
                if let Some((off, ty)) = self.find_member(&inner, field, depth + 1)? {
                    return Ok(Some((m.bit_offset() + off, ty)));
                }
            }
        }
        Ok(None)
    }

    /// Byte offset of a dotted path such as `sock.__sk_common.skc_state` (first element is a struct).
    pub fn offset_of(&self, path: &str) -> Result<u32> {
        let mut parts = path.split('.');
        let root = parts.next().ok_or_else(|| anyhow!("empty BTF path"))?;
        let mut t = self.struct_by_name(root)?;
        let mut bits = 0u32;
        for field in parts {
            let (off, ty) = self
                .find_member(&t, field, 0)?
                .ok_or_else(|| anyhow!("BTF: no field `{field}` in `{path}`"))?;
            bits += off;
            t = self.strip(ty)?;
        }
        if !bits.is_multiple_of(8) {
            bail!("BTF: `{path}` is not byte aligned");
        }
        Ok(bits / 8)
    }

    /// Every (name, value) of an enum, e.g. `skb_drop_reason` for drop-reason names.
    pub fn enum_members(&self, enum_name: &str) -> Result<Vec<(String, u64)>> {
        let out = self.enumerators(enum_name)?;
        if out.is_empty() {
            bail!("BTF enum `{enum_name}` not found");
        }
        Ok(out)
    }

    /// Value of an enumerator (e.g. `skb_drop_reason` / `SKB_DROP_REASON_NETFILTER_DROP`).
    pub fn enum_value(&self, enum_name: &str, variant: &str) -> Result<u64> {
        self.enumerators(enum_name)?
            .into_iter()
            .find(|(name, _)| name == variant)
            .map(|(_, value)| value)
            .ok_or_else(|| anyhow!("BTF enum `{enum_name}` has no `{variant}`"))
    }

    /// The (name, value) of every enumerator of every enum named `enum_name`, 32- and 64-bit
    /// alike; an enumerator whose name does not resolve is listed with an empty name.
    fn enumerators(&self, enum_name: &str) -> Result<Vec<(String, u64)>> {
        let mut out = Vec::new();
        for t in self
            .btf
            .resolve_types_by_name(enum_name)
            .map_err(|e| anyhow!("BTF has no enum `{enum_name}`: {e}"))?
        {
            match t {
                Type::Enum(e) => {
                    for m in &e.members {
                        out.push((self.btf.resolve_name(m).unwrap_or_default(), m.val() as u64));
                    }
                }
                Type::Enum64(e) => {
                    for m in &e.members {
                        out.push((self.btf.resolve_name(m).unwrap_or_default(), m.val()));
                    }
                }
                _ => {}
            }
        }
        Ok(out)
    }
}

/// Every offset the kernel programs read, by global name.
pub const OFFSET_GLOBALS: &[(&str, &str)] = &[
    ("OFF_SK_STATE", "sock_common.skc_state"),
    ("OFF_SK_FAMILY", "sock_common.skc_family"),
    ("OFF_SK_NET", "sock_common.skc_net.net"),
    ("OFF_SK_COOKIE", "sock_common.skc_cookie"),
    ("OFF_SK_NUM", "sock_common.skc_num"),
    ("OFF_SK_DPORT", "sock_common.skc_dport"),
    ("OFF_SK_RCV_SADDR", "sock_common.skc_rcv_saddr"),
    ("OFF_SK_DADDR", "sock_common.skc_daddr"),
    ("OFF_SK_V6_RCV_SADDR", "sock_common.skc_v6_rcv_saddr"),
    ("OFF_SK_V6_DADDR", "sock_common.skc_v6_daddr"),
    ("OFF_SK_ACK_BACKLOG", "sock.sk_ack_backlog"),
    ("OFF_SK_MAX_ACK_BACKLOG", "sock.sk_max_ack_backlog"),
    ("OFF_SK_PROTOCOL", "sock.sk_protocol"),
    ("OFF_SK_ERR", "sock.sk_err"),
    ("OFF_INET_SPORT", "inet_sock.inet_sport"),
    (
        "OFF_ICSK_QLEN",
        "inet_connection_sock.icsk_accept_queue.qlen",
    ),
    ("OFF_NET_INUM", "net.ns.inum"),
    ("OFF_NET_SYNCOOKIES", "net.ipv4.sysctl_tcp_syncookies"),
    ("OFF_NET_MAX_SYN_BACKLOG", "net.ipv4.sysctl_max_syn_backlog"),
    (
        "OFF_NET_ABORT_ON_OVERFLOW",
        "net.ipv4.sysctl_tcp_abort_on_overflow",
    ),
    ("OFF_SKB_HEAD", "sk_buff.head"),
    ("OFF_SKB_NETWORK_HEADER", "sk_buff.network_header"),
    ("OFF_SKB_TRANSPORT_HEADER", "sk_buff.transport_header"),
    ("OFF_SKB_SK", "sk_buff.sk"),
    ("OFF_SKB_NFCT", "sk_buff._nfct"),
    ("OFF_SKB_DEV", "sk_buff.dev"),
    ("OFF_DEV_NET", "net_device.nd_net.net"),
    ("OFF_TASK_NSPROXY", "task_struct.nsproxy"),
    ("OFF_NSPROXY_NET_NS", "nsproxy.net_ns"),
    ("OFF_TASK_FILES", "task_struct.files"),
    ("OFF_FILES_FDT", "files_struct.fdt"),
    ("OFF_FDT_FD", "fdtable.fd"),
    ("OFF_FDT_MAX_FDS", "fdtable.max_fds"),
    ("OFF_FILE_PRIVATE_DATA", "file.private_data"),
    ("OFF_SOCKET_SK", "socket.sk"),
];

/// Resolves all offsets; also checks the layout assumptions the programs make.
pub fn resolve_offsets(btf: &KernelBtf) -> Result<Vec<(&'static str, u32)>> {
    for (path, what) in [
        ("sock.__sk_common", "struct sock starts with sock_common"),
        (
            "request_sock.__req_common",
            "struct request_sock starts with sock_common",
        ),
        (
            "tcp_sock.inet_conn",
            "struct tcp_sock starts with inet_connection_sock",
        ),
    ] {
        let off = btf
            .offset_of(path)
            .with_context(|| format!("check that {what}"))?;
        if off != 0 {
            bail!("unsupported kernel layout: expected {what} (offset {off})");
        }
    }
    OFFSET_GLOBALS
        .iter()
        .map(|(global, path)| {
            btf.offset_of(path)
                .with_context(|| format!("resolve {path} for {global}"))
                .map(|o| (*global, o))
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_enumerator_value_is_the_one_listed_among_the_members() {
        // Reads the running kernel's BTF; nothing to check on a kernel without it.
        let Ok(btf) = KernelBtf::load(Path::new("/sys/kernel/btf/vmlinux")) else {
            return;
        };
        let members = btf.enum_members("tcp_ca_event").unwrap();
        let (name, value) = &members[1];
        assert_eq!(btf.enum_value("tcp_ca_event", name).unwrap(), *value);
        assert!(btf.enum_value("tcp_ca_event", "NO_SUCH_EVENT").is_err());
        assert!(btf.enum_members("no_such_enum_in_any_kernel").is_err());
    }
}
