//! The trace commands' and `ports`' `--pid` and `--dst` filters.
use std::{collections::HashSet, net::IpAddr};

use anyhow::{Result, bail};

use crate::snapshot::procs;

/// `--dst ADDR[:PORT]` (IPv6 as `[addr]:port` or bare).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DstFilter {
    pub addr: IpAddr,
    pub port: Option<u16>,
}

impl DstFilter {
    pub fn parse(s: &str) -> Result<Self> {
        let s = s.trim();
        if let Ok(addr) = s.parse::<IpAddr>() {
            return Ok(Self { addr, port: None });
        }
        if let Ok(sa) = s.parse::<std::net::SocketAddr>() {
            return Ok(Self {
                addr: sa.ip(),
                port: Some(sa.port()),
            });
        }
        bail!(
            "invalid --dst '{s}': use an address with an optional port, e.g. 127.0.0.1:9000 or [::1]:9000"
        )
    }
    pub fn matches(&self, addr: IpAddr, port: u16) -> bool {
        self.addr == addr && self.port.is_none_or(|p| p == port)
    }
}

/// `--pid PID|NAME`, kept as the pids found at start plus the name (for processes started later).
#[derive(Debug, Clone)]
pub struct PidFilter {
    pub pids: HashSet<u32>,
    pub name: Option<String>,
}

impl PidFilter {
    pub fn resolve(arg: &str) -> Result<Self> {
        let owners = procs::resolve_pid_arg(arg)?;
        Ok(Self {
            pids: owners.iter().map(|o| o.pid).collect(),
            name: arg.parse::<u32>().is_err().then(|| arg.trim().to_string()),
        })
    }
    pub fn matches(&self, tgid: u32, comm: &str) -> bool {
        self.pids.contains(&tgid) || self.name.as_deref().is_some_and(|n| n == comm)
    }
}
