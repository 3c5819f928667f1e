//! Connect: the port sysctls of one namespace (read in it), for the ports verdict.
use anyhow::{Context as _, Result};

use super::diagnose::PortRange;
use crate::snapshot::counters::read_sysctl;

/// Port-related sysctls of the calling thread's namespace.
#[derive(Debug, Clone)]
pub struct PortSysctls {
    pub range: PortRange,
    pub tw_reuse: Option<u32>,
}

pub fn read_port_sysctls() -> Result<PortSysctls> {
    let range = std::fs::read_to_string("/proc/sys/net/ipv4/ip_local_port_range")
        .context("read ip_local_port_range")?;
    let reserved =
        std::fs::read_to_string("/proc/sys/net/ipv4/ip_local_reserved_ports").unwrap_or_default();
    let range = PortRange::parse(&range, &reserved).context("parse ip_local_port_range")?;
    let tw_reuse = read_sysctl("/proc/sys/net/ipv4/tcp_tw_reuse");
    Ok(PortSysctls { range, tw_reuse })
}
