//! The scenarios of `tcpq lab NAME`: reproducible incidents in network namespaces of their
//! own, so a user can check on their own kernel that tcpq sees what it should. The integration
//! tests use the same generators. Everything a lab creates (namespaces, veth, nft tables) is
//! removed on exit, including on Ctrl-C. Sysctls are only ever set inside the lab's own
//! namespaces, but for the conntrack lab's global nf_conntrack_max (restored on exit).
use std::{
    collections::VecDeque,
    net::{Ipv4Addr, Ipv6Addr, SocketAddr, SocketAddrV4},
    sync::{
        Arc,
        atomic::{AtomicBool, AtomicU64, Ordering},
    },
    thread,
    time::{Duration, Instant},
};

use anyhow::{Context as _, Result, bail};
use serde_json::json;
use socket2::{Domain, Socket, Type};

mod app;
mod listen;
mod outbound;

use app::{close_wait, connection_limit, slow_accept, workers};
use listen::{overflow, storm, synflood};
use outbound::{conntrack, failing_upstream, ports, stale_upstream};

use crate::{
    Stop,
    generators::{
        LabNginx, Server, burst, client_alive, client_child, connect_nonblocking, hold_connects,
        lab_source, refused_child, send_syns, worker_loop,
    },
    netns::{NetnsGuard, ip, nft_available, nft_in, spawn_in, write_sysctl_in},
    sysctl,
};

/// Which incident (`tcpq lab NAME`; tcpq's CLI describes each).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Scenario {
    Overflow,
    Synflood,
    Ports,
    Conntrack,
    SlowAccept,
    Workers,
    CloseWait,
    StaleUpstream,
    FailingUpstream,
    ConnectionLimit,
    Storm,
}

impl Scenario {
    /// Its name on the command line and in the facts line.
    pub fn name(self) -> &'static str {
        match self {
            Self::Overflow => "overflow",
            Self::Synflood => "synflood",
            Self::Ports => "ports",
            Self::Conntrack => "conntrack",
            Self::SlowAccept => "slow-accept",
            Self::Workers => "workers",
            Self::CloseWait => "close-wait",
            Self::StaleUpstream => "stale-upstream",
            Self::FailingUpstream => "failing-upstream",
            Self::ConnectionLimit => "connection-limit",
            Self::Storm => "storm",
        }
    }
}

/// One lab run: the scenario and its settings (tcpq's `lab` options, documented there).
#[derive(Debug, Clone)]
pub struct Lab {
    pub scenario: Scenario,
    pub netns: Option<String>,
    pub port: u16,
    pub backlog: Option<u32>,
    pub duration: Duration,
    pub syncookies: u8,
    pub max_syn_backlog: Option<u32>,
    pub abort_on_overflow: bool,
    pub ct_max: u32,
    pub ipv6: bool,
    pub accept_rate: u32,
    pub rate: Option<u32>,
    pub somaxconn: Option<u32>,
    pub clients: Option<u32>,
    pub process_name: String,
    pub json: bool,
}

impl Lab {
    /// The listen() backlog: given, or the lab's default (small enough to overflow at once).
    pub fn backlog(&self) -> u32 {
        self.backlog.unwrap_or(match self.scenario {
            Scenario::Overflow => 4,
            Scenario::Synflood => 16,
            Scenario::Ports => 1024,
            Scenario::Conntrack => 4096,
            // Their bursts (50 and 100 clients) fill the queue past half its limit without a
            // refusal: a slow application under pressure, not an overflow.
            Scenario::SlowAccept => 64,
            Scenario::Workers => 128,
            Scenario::CloseWait | Scenario::StaleUpstream | Scenario::FailingUpstream => 256,
            Scenario::Storm => 1,
            // nginx's own default (NGX_LISTEN_BACKLOG): the queue is not the limit here.
            Scenario::ConnectionLimit => 511,
        })
    }

    /// Connection attempts (storm: SYNs) per second: given, or the lab's default.
    pub fn rate(&self) -> u32 {
        self.rate.unwrap_or(match self.scenario {
            Scenario::Storm => 0,
            _ => 200,
        })
    }
}

/// --somaxconn inside the server's namespace, before the server calls listen(): listen() caps
/// its backlog at the value it reads then (`__sys_listen_socket()`).
fn set_somaxconn(ns: &NetnsGuard, args: &Lab) -> Result<()> {
    match args.somaxconn {
        Some(v) => write_sysctl_in(ns, "/proc/sys/net/core/somaxconn", &v.to_string()),
        None => Ok(()),
    }
}

fn facts(args: &Lab, extra: serde_json::Value) {
    let mut v = json!({
        "event": "lab",
        "lab": args.scenario.name(),
        "pid": std::process::id(),
        "lport": args.port,
        "backlog": args.backlog(),
        "somaxconn": args.somaxconn,
        "process": args.process_name,
    });
    if let (Some(o), Some(e)) = (v.as_object_mut(), extra.as_object()) {
        for (k, val) in e {
            o.insert(k.clone(), val.clone());
        }
    }
    if args.json {
        println!("{v}");
    } else {
        println!("tcpq lab: {}", v);
    }
}

/// Runs `args`'s lab to its end (or until `stop`), printing its facts and `lab_done` lines.
/// The caller installs whatever makes `stop` true (tcpq: its signal handlers) first.
pub fn run(args: &Lab, stop: Stop) -> Result<()> {
    if nix::unistd::geteuid().as_raw() != 0 {
        bail!("tcpq lab needs root (it creates network namespaces): run it with sudo");
    }
    if args.backlog() == 0 || args.port == 0 {
        bail!("tcpq lab needs a non-zero --port and --backlog");
    }
    // Name the process so its listener is easy to tell from tcpq itself (/proc/PID/comm), or
    // as the program whose fixes the user wants to see.
    let name = std::ffi::CString::new(args.process_name.as_str()).with_context(|| {
        format!(
            "invalid --process-name '{}': it must not contain NUL",
            args.process_name
        )
    })?;
    nix::sys::prctl::set_name(&name).with_context(|| {
        format!(
            "name the lab process '{}' (prctl PR_SET_NAME): give a name of at most 15 bytes",
            args.process_name
        )
    })?;
    match args.scenario {
        Scenario::Overflow => overflow(args, stop),
        Scenario::Synflood => synflood(args, stop),
        Scenario::Ports => ports(args, stop),
        Scenario::Conntrack => conntrack(args, stop),
        Scenario::SlowAccept => slow_accept(args, stop),
        Scenario::Workers => workers(args, stop),
        Scenario::CloseWait => close_wait(args, stop),
        Scenario::StaleUpstream => stale_upstream(args, stop),
        Scenario::FailingUpstream => failing_upstream(args, stop),
        Scenario::Storm => storm(args, stop),
        Scenario::ConnectionLimit => connection_limit(args, stop),
    }
}

fn done_line(args: &Lab, stop: Stop, lab: &str, extra: serde_json::Value) {
    let mut v = json!({"event": "lab_done", "lab": lab, "interrupted": stop.requested()});
    if let (Some(o), Some(e)) = (v.as_object_mut(), extra.as_object()) {
        for (k, val) in e {
            o.insert(k.clone(), val.clone());
        }
    }
    if args.json {
        println!("{v}")
    } else {
        println!("tcpq lab: {v}")
    }
}

fn lab_netns(args: &Lab) -> Result<NetnsGuard> {
    let name = args
        .netns
        .clone()
        .unwrap_or_else(|| format!("tcpq-lab-{}", std::process::id()));
    NetnsGuard::create_or_use(&name)
}
