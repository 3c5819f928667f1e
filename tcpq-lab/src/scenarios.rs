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

/// Loopback, one namespace. Phase 1 (`ack`, needs nft): clients complete the handshake while
/// their final ACKs are held back, then all ACK at once into a full accept queue. Phase 2
/// (`syn`): a connect storm against a server accepting `accept_rate`/s.
fn overflow(args: &Lab, stop: Stop) -> Result<()> {
    let name = args
        .netns
        .clone()
        .unwrap_or_else(|| format!("tcpq-lab-{}", std::process::id()));
    let ns = NetnsGuard::create_or_use(&name)?;
    set_somaxconn(&ns, args)?;
    if args.abort_on_overflow {
        write_sysctl_in(&ns, "/proc/sys/net/ipv4/tcp_abort_on_overflow", "1")?;
    }
    let addr = if args.ipv6 {
        SocketAddr::new(Ipv6Addr::LOCALHOST.into(), args.port)
    } else {
        SocketAddr::new(Ipv4Addr::LOCALHOST.into(), args.port)
    };
    let server = Server::start(&ns, addr, args.backlog(), args.accept_rate)?;
    let with_nft = nft_available();
    facts(
        args,
        json!({"netns": ns.name, "netns_inode": ns.inode(), "laddr": addr.ip().to_string(), "ack_phase": with_nft, "accept_rate": args.accept_rate, "abort_on_overflow": args.abort_on_overflow}),
    );

    let attempts = Arc::new(AtomicU64::new(0));
    let mut held: Vec<Socket> = Vec::new();
    if with_nft && !stop.requested() {
        // Hold the server still so the queue fills exactly from these handshakes.
        server.accepting.store(false, Ordering::SeqCst);
        // Half-fill the accept queue with completed handshakes first, so that some of the
        // request sockets below overflow too (not only cookie ACKs): with
        // tcp_abort_on_overflow=1 those are the ones answered with a reset.
        let prefill = (args.backlog() as usize).div_ceil(2);
        let at = attempts.clone();
        let h = spawn_in(&ns, move || {
            let mut v = Vec::new();
            for _ in 0..prefill {
                if let Some(s) = connect_nonblocking(addr) {
                    v.push(s);
                }
                at.fetch_add(1, Ordering::Relaxed);
            }
            v
        })?;
        held.extend(
            h.join()
                .map_err(|_| anyhow::anyhow!("client thread panicked"))??,
        );
        stop.nap(Duration::from_millis(50));
        nft_in(
            &ns.name,
            &format!(
                "table inet tcpq_lab {{\n chain out {{\n  type filter hook output priority 0; policy accept;\n  tcp dport {} tcp flags & (fin | syn | rst) == 0 drop\n }}\n}}\n",
                args.port
            ),
        )?;
        let n = args.backlog() as usize + 1 + 8;
        let at = attempts.clone();
        let h = spawn_in(&ns, move || {
            let mut v = Vec::new();
            for _ in 0..n {
                if let Some(s) = connect_nonblocking(addr) {
                    v.push(s);
                }
                at.fetch_add(1, Ordering::Relaxed);
                thread::sleep(Duration::from_millis(5));
            }
            v
        })?;
        held.extend(
            h.join()
                .map_err(|_| anyhow::anyhow!("client thread panicked"))??,
        );
        stop.nap(Duration::from_millis(300));
        nft_in(&ns.name, "delete table inet tcpq_lab")?;
        // Data rides on an ACK: each one completes a handshake into the (full) accept queue.
        for s in &held {
            let _ = s.send(b"x");
        }
        stop.nap(Duration::from_millis(500));
        server.accepting.store(true, Ordering::SeqCst);
    }

    // Phase 2: connect storm, each client socket held for a second then closed.
    let deadline = Instant::now() + args.duration;
    let rate = args.rate().max(1);
    let at = attempts.clone();
    let storm = spawn_in(&ns, move || {
        let interval = Duration::from_secs_f64(1.0 / rate as f64);
        let mut open: VecDeque<(Instant, Socket)> = VecDeque::new();
        while Instant::now() < deadline && !stop.requested() {
            if let Some(s) = connect_nonblocking(addr) {
                open.push_back((Instant::now(), s));
            }
            at.fetch_add(1, Ordering::Relaxed);
            while open
                .front()
                .is_some_and(|(t, _)| t.elapsed() > Duration::from_secs(1))
            {
                open.pop_front();
            }
            thread::sleep(interval);
        }
    })?;
    storm
        .join()
        .map_err(|_| anyhow::anyhow!("storm thread panicked"))??;
    drop(held);
    stop.nap(Duration::from_millis(500));
    let accepted = server.accepted.load(Ordering::Relaxed);
    drop(server);
    done_line(
        args,
        stop,
        "overflow",
        json!({"connect_attempts": attempts.load(Ordering::Relaxed), "accepted": accepted}),
    );
    Ok(())
}

/// Two namespaces over veth: the client's final ACKs are dropped (nft in the client namespace),
/// so every handshake stays half-open in the server's SYN queue until it is full.
fn synflood(args: &Lab, stop: Stop) -> Result<()> {
    if !nft_available() {
        bail!("tcpq lab synflood needs nft to drop the client's ACKs: apt-get install nftables");
    }
    let id = std::process::id() % 100_000;
    let srv_name = args
        .netns
        .clone()
        .unwrap_or_else(|| format!("tcpq-lab-srv-{id}"));
    let cli_name = format!("{srv_name}-cli");
    let srv = NetnsGuard::create_or_use(&srv_name)?;
    let cli = NetnsGuard::create_or_use(&cli_name)?;
    let (vs, vc) = (format!("tqs{id}"), format!("tqc{id}"));
    // Link-local addresses on a veth between our own two namespaces: nothing leaves the host.
    let (srv_ip, cli_ip) = (
        Ipv4Addr::new(169, 254, 77, 1),
        Ipv4Addr::new(169, 254, 77, 2),
    );
    ip(&[
        "link", "add", &vs, "netns", &srv.name, "type", "veth", "peer", "name", &vc, "netns",
        &cli.name,
    ])?;
    ip(&[
        "-n",
        &srv.name,
        "addr",
        "add",
        "169.254.77.1/30",
        "dev",
        &vs,
    ])?;
    ip(&[
        "-n",
        &cli.name,
        "addr",
        "add",
        "169.254.77.2/30",
        "dev",
        &vc,
    ])?;
    ip(&["-n", &srv.name, "link", "set", &vs, "up"])?;
    ip(&["-n", &cli.name, "link", "set", &vc, "up"])?;
    write_sysctl_in(
        &srv,
        "/proc/sys/net/ipv4/tcp_syncookies",
        &args.syncookies.to_string(),
    )?;
    set_somaxconn(&srv, args)?;
    if let Some(max) = args.max_syn_backlog {
        write_sysctl_in(
            &srv,
            "/proc/sys/net/ipv4/tcp_max_syn_backlog",
            &max.to_string(),
        )?;
    }
    nft_in(
        &cli.name,
        &format!(
            "table inet tcpq_lab {{\n chain out {{\n  type filter hook output priority 0; policy accept;\n  ip daddr {srv_ip} tcp dport {} tcp flags & (fin | syn | rst) == 0 drop\n }}\n}}\n",
            args.port
        ),
    )?;
    let addr = SocketAddr::V4(SocketAddrV4::new(srv_ip, args.port));
    let server = Server::start(&srv, addr, args.backlog(), 1000)?;
    facts(
        args,
        json!({"netns": srv.name, "netns_inode": srv.inode(), "client_netns": cli.name, "laddr": srv_ip.to_string(), "raddr": cli_ip.to_string(), "syncookies": args.syncookies, "max_syn_backlog": args.max_syn_backlog}),
    );

    let deadline = Instant::now() + args.duration;
    let rate = args.rate().max(1);
    let attempts = Arc::new(AtomicU64::new(0));
    let at = attempts.clone();
    let open = hold_connects(&cli, addr, rate, deadline, at, stop)?;
    stop.nap(Duration::from_millis(300));
    drop(server);
    drop(open);
    done_line(
        args,
        stop,
        "synflood",
        json!({"connect_attempts": attempts.load(Ordering::Relaxed)}),
    );
    drop(cli);
    drop(srv);
    Ok(())
}

/// One namespace, `ip_local_port_range` of 16 ports and `tcp_tw_reuse=0` inside it, a server on
/// 127.0.0.1:PORT that closes after the client, and a client that connects and closes at once
/// (so TIME_WAIT stays on the client side) until connect() fails with EADDRNOTAVAIL, and keeps
/// trying (every 10 ms) for the rest of --duration.
fn ports(args: &Lab, stop: Stop) -> Result<()> {
    let name = args
        .netns
        .clone()
        .unwrap_or_else(|| format!("tcpq-lab-{}", std::process::id()));
    let ns = NetnsGuard::create_or_use(&name)?;
    let (lo, hi) = (40000u16, 40015u16);
    write_sysctl_in(
        &ns,
        "/proc/sys/net/ipv4/ip_local_port_range",
        &format!("{lo} {hi}"),
    )?;
    write_sysctl_in(&ns, "/proc/sys/net/ipv4/tcp_tw_reuse", "0")?;
    let addr = SocketAddr::new(Ipv4Addr::LOCALHOST.into(), args.port);
    let server_stop = Arc::new(AtomicBool::new(false));
    let (tx, rx) = std::sync::mpsc::channel::<Result<()>>();
    let s2 = server_stop.clone();
    let server = spawn_in(&ns, move || {
        let listener = match (|| -> Result<Socket> {
            let sock = Socket::new(Domain::IPV4, Type::STREAM, None)?;
            sock.set_reuse_address(true)?;
            sock.bind(&addr.into())
                .with_context(|| format!("bind {addr}"))?;
            sock.listen(1024)?;
            sock.set_nonblocking(true)?;
            Ok(sock)
        })() {
            Ok(l) => {
                let _ = tx.send(Ok(()));
                l
            }
            Err(e) => {
                let _ = tx.send(Err(e));
                return;
            }
        };
        let mut open: Vec<Socket> = Vec::new();
        let mut buf = [std::mem::MaybeUninit::<u8>::uninit(); 64];
        while !s2.load(Ordering::SeqCst) {
            match listener.accept() {
                Ok((c, _)) => {
                    let _ = c.set_nonblocking(true);
                    open.push(c);
                }
                Err(_) => thread::sleep(Duration::from_millis(1)),
            }
            // Close each connection once the client has closed its side (read returns 0).
            open.retain(|c| !matches!(c.recv(&mut buf), Ok(0)));
        }
    })?;
    rx.recv_timeout(Duration::from_secs(5))
        .context("server did not start")??;
    facts(
        args,
        json!({"netns": ns.name, "netns_inode": ns.inode(), "daddr": "127.0.0.1", "dport": args.port, "ip_local_port_range": [lo, hi], "tcp_tw_reuse": 0}),
    );

    let deadline = Instant::now() + args.duration;
    let client = spawn_in(&ns, move || {
        let (mut ok, mut eaddrnotavail, mut other) = (0u64, 0u64, 0u64);
        while Instant::now() < deadline && !stop.requested() {
            let s = match Socket::new(Domain::IPV4, Type::STREAM, None) {
                Ok(s) => s,
                Err(_) => break,
            };
            match s.connect_timeout(&addr.into(), Duration::from_secs(1)) {
                Ok(()) => {
                    ok += 1;
                    drop(s); // this side closes first: TIME_WAIT is ours
                    thread::sleep(Duration::from_millis(2));
                }
                Err(e) if e.raw_os_error() == Some(libc::EADDRNOTAVAIL) => {
                    eaddrnotavail += 1;
                    thread::sleep(Duration::from_millis(10));
                }
                Err(_) => {
                    other += 1;
                    thread::sleep(Duration::from_millis(10));
                }
            }
        }
        (ok, eaddrnotavail, other)
    })?;
    let (ok, eaddrnotavail, other) = client
        .join()
        .map_err(|_| anyhow::anyhow!("client thread panicked"))??;
    server_stop.store(true, Ordering::SeqCst);
    let _ = server.join();
    done_line(
        args,
        stop,
        "ports",
        json!({"connects_ok": ok, "eaddrnotavail": eaddrnotavail, "other_failures": other}),
    );
    Ok(())
}

fn conntrack(args: &Lab, stop: Stop) -> Result<()> {
    if !nft_available() {
        bail!("tcpq lab conntrack needs nft for its `ct state` rule: apt-get install nftables");
    }
    let name = args
        .netns
        .clone()
        .unwrap_or_else(|| format!("tcpq-lab-{}", std::process::id()));
    let ns = NetnsGuard::create_or_use(&name)?;
    let rule_port = 9999u16;
    // Any `ct` expression makes this namespace track connections.
    nft_in(
        &ns.name,
        &format!(
            "table inet tcpq_lab {{\n chain out {{\n  type filter hook output priority 0; policy accept;\n  ct state established,related accept\n  tcp dport {rule_port} drop\n }}\n}}\n"
        ),
    )?;
    let addr = SocketAddr::new(Ipv4Addr::LOCALHOST.into(), args.port);
    let server = Server::start(&ns, addr, 4096, 100_000)?;
    // A few connects a plain rule drops (they get an entry, then the rule drops them).
    let rule_addr = SocketAddr::new(Ipv4Addr::LOCALHOST.into(), rule_port);
    let rule_socks = spawn_in(&ns, move || {
        (0..5)
            .filter_map(|_| connect_nonblocking(rule_addr))
            .collect::<Vec<_>>()
    })?
    .join()
    .map_err(|_| anyhow::anyhow!("client thread panicked"))??;
    let guard = sysctl::lower_conntrack_max(args.ct_max)?;
    facts(
        args,
        json!({"netns": ns.name, "netns_inode": ns.inode(), "daddr": "127.0.0.1", "dport": args.port, "rule_port": rule_port, "ct_max": args.ct_max, "ct_max_original": guard.previous()}),
    );
    let deadline = Instant::now() + args.duration;
    let rate = args.rate().max(1);
    let attempts = Arc::new(AtomicU64::new(0));
    let at = attempts.clone();
    let open = hold_connects(&ns, addr, rate, deadline, at, stop)?;
    stop.nap(Duration::from_millis(200));
    drop(guard); // restore the global maximum before anything else
    drop(open);
    drop(rule_socks);
    drop(server);
    done_line(
        args,
        stop,
        "conntrack",
        json!({"connect_attempts": attempts.load(Ordering::Relaxed)}),
    );
    Ok(())
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

fn slow_accept(args: &Lab, stop: Stop) -> Result<()> {
    let ns = lab_netns(args)?;
    set_somaxconn(&ns, args)?;
    let addr = SocketAddr::new(Ipv4Addr::LOCALHOST.into(), args.port);
    let server = Server::start(&ns, addr, args.backlog(), 10)?;
    facts(
        args,
        json!({"netns": ns.name, "netns_inode": ns.inode(), "laddr": "127.0.0.1", "accept_rate": 10, "clients": 50}),
    );
    let held = burst(&ns, addr, 50)?;
    stop.nap(args.duration.max(Duration::from_secs(6)));
    let accepted = server.accepted.load(Ordering::Relaxed);
    drop(held);
    drop(server);
    done_line(args, stop, "slow-accept", json!({"accepted": accepted}));
    Ok(())
}

fn workers(args: &Lab, stop: Stop) -> Result<()> {
    use std::os::fd::AsRawFd as _;
    let ns = lab_netns(args)?;
    set_somaxconn(&ns, args)?;
    let addr = SocketAddr::new(Ipv4Addr::LOCALHOST.into(), args.port);
    let backlog = args.backlog() as i32;
    let listener = spawn_in(&ns, move || -> Result<Socket> {
        let sock = Socket::new(Domain::IPV4, Type::STREAM, None)?;
        sock.set_reuse_address(true)?;
        sock.bind(&addr.into())
            .with_context(|| format!("bind {addr}"))?;
        sock.listen(backlog)?;
        Ok(sock)
    })?
    .join()
    .map_err(|_| anyhow::anyhow!("listener thread panicked"))???;
    let mut children = Vec::new();
    for _ in 0..5 {
        // SAFETY: the child only calls async-signal-safe functions (worker_loop) and never returns.
        match unsafe { nix::unistd::fork() }.context("fork a worker")? {
            nix::unistd::ForkResult::Child => worker_loop(listener.as_raw_fd()),
            nix::unistd::ForkResult::Parent { child } => children.push(child),
        }
    }
    facts(
        args,
        json!({"netns": ns.name, "netns_inode": ns.inode(), "laddr": "127.0.0.1", "workers": children.iter().map(|c| c.as_raw()).collect::<Vec<_>>(), "clients": 100}),
    );
    let held = burst(&ns, addr, 100)?;
    stop.nap(args.duration);
    for c in &children {
        let _ = nix::sys::signal::kill(*c, nix::sys::signal::Signal::SIGKILL);
        let _ = nix::sys::wait::waitpid(*c, None);
    }
    drop(held);
    drop(listener);
    done_line(args, stop, "workers", json!({"workers": children.len()}));
    Ok(())
}

fn connection_limit(args: &Lab, stop: Stop) -> Result<()> {
    const WORKER_CONNECTIONS: u32 = 32;
    let ns = lab_netns(args)?;
    set_somaxconn(&ns, args)?;
    let addr = SocketAddr::new(Ipv4Addr::LOCALHOST.into(), args.port);
    let nginx = LabNginx::start(&ns, args.port, args.backlog(), WORKER_CONNECTIONS)?;
    let clients = args.clients.unwrap_or(200) as usize;
    // Listening once nginx's worker is up (the master binds, the worker accepts).
    let up = spawn_in(&ns, move || {
        let end = Instant::now() + Duration::from_secs(5);
        while Instant::now() < end {
            if std::net::TcpStream::connect(addr).is_ok() {
                return true;
            }
            thread::sleep(Duration::from_millis(50));
        }
        false
    })?
    .join()
    .map_err(|_| anyhow::anyhow!("probe thread panicked"))??;
    if !up {
        bail!(
            "nginx in namespace {} does not accept on {addr} after 5 s: see its error log",
            ns.name
        );
    }
    facts(
        args,
        json!({"netns": ns.name, "netns_inode": ns.inode(), "laddr": "127.0.0.1", "nginx": nginx.master().map(|p| p.as_raw()), "worker_processes": 1, "worker_connections": WORKER_CONNECTIONS, "clients": clients}),
    );
    let duration = args.duration;
    let (connects, dropped) = spawn_in(&ns, move || {
        // The request head never ends (a slow client, an upload starting): nginx holds each
        // connection it has read from (not reusable), so past its cap it has to drop the ones
        // it accepts — unread: ngx_drain_connections() closes the newest idle ones, or
        // ngx_event_accept() closes the new one ("worker_connections are not enough").
        let req = b"GET / HTTP/1.1\r\nHost: lab\r\n";
        let mut held: Vec<Option<Socket>> = (0..clients).map(|_| None).collect();
        let (mut connects, mut dropped) = (0u64, 0u64);
        let end = Instant::now() + duration;
        while Instant::now() < end && !stop.requested() {
            for slot in held.iter_mut() {
                if slot.as_ref().is_some_and(|s| !client_alive(s)) {
                    *slot = None;
                    dropped += 1;
                }
                if slot.is_none() {
                    // Connect and send at once, as a load generator does: the request is in
                    // nginx's receive queue by the time it accepts.
                    let Ok(s) = Socket::new(Domain::IPV4, Type::STREAM, None) else {
                        continue;
                    };
                    if s.connect(&addr.into()).is_err() {
                        continue;
                    }
                    connects += 1;
                    let _ = s.send(req);
                    let _ = s.set_nonblocking(true);
                    *slot = Some(s);
                }
            }
            stop.nap(Duration::from_millis(200));
        }
        // Read what is left before closing: a client closing with an answer unread would be
        // reset by its own kernel (TCPAbortOnClose on the client side).
        for s in held.iter().flatten() {
            client_alive(s);
        }
        (connects, dropped)
    })?
    .join()
    .map_err(|_| anyhow::anyhow!("client thread panicked"))??;
    let not_enough = nginx.not_enough_lines();
    drop(nginx);
    done_line(
        args,
        stop,
        "connection-limit",
        json!({"connects": connects, "dropped": dropped, "worker_connections_not_enough": not_enough}),
    );
    Ok(())
}

fn close_wait(args: &Lab, stop: Stop) -> Result<()> {
    let ns = lab_netns(args)?;
    let addr = SocketAddr::new(Ipv4Addr::LOCALHOST.into(), args.port);
    let duration = args.duration;
    let (tx, rx) = std::sync::mpsc::channel::<Result<()>>();
    // The thread stays in the namespace while it holds the sockets, so tools can find them.
    let holder = spawn_in(&ns, move || {
        let setup = (|| -> Result<Vec<Socket>> {
            let l = Socket::new(Domain::IPV4, Type::STREAM, None)?;
            l.set_reuse_address(true)?;
            l.bind(&addr.into())
                .with_context(|| format!("bind {addr}"))?;
            l.listen(64)?;
            let mut kept = Vec::new();
            for _ in 0..10 {
                let c = Socket::new(Domain::IPV4, Type::STREAM, None)?;
                c.connect(&addr.into())?;
                let (s, _) = l.accept()?;
                kept.push(s); // the server side: never closed
                drop(c); // the client hangs up
            }
            kept.push(l);
            Ok(kept)
        })();
        match setup {
            Ok(kept) => {
                let _ = tx.send(Ok(()));
                stop.nap(duration);
                drop(kept);
            }
            Err(e) => {
                let _ = tx.send(Err(e));
            }
        }
    })?;
    rx.recv_timeout(Duration::from_secs(5))
        .context("close-wait setup did not finish")??;
    facts(
        args,
        json!({"netns": ns.name, "netns_inode": ns.inode(), "laddr": "127.0.0.1", "close_wait": 10}),
    );
    let _ = holder.join();
    done_line(args, stop, "close-wait", json!({}));
    Ok(())
}

/// Pids of the `stale-upstream` lab's clients: (waiting on the silent upstream, pooled).
type StaleClients = (Vec<nix::unistd::Pid>, nix::unistd::Pid);

fn stale_upstream(args: &Lab, stop: Stop) -> Result<()> {
    use std::io::{Read as _, Write as _};
    use std::os::fd::AsRawFd as _;
    let ns = lab_netns(args)?;
    let addr = SocketAddr::new(Ipv4Addr::LOCALHOST.into(), args.port);
    let waiting = args.clients.unwrap_or(3) as usize;
    let backlog = args.backlog() as i32;
    let server_stop = Arc::new(AtomicBool::new(false));
    let (tx, rx) = std::sync::mpsc::channel::<Result<StaleClients>>();
    let s = server_stop.clone();
    // The server thread stays in the namespace (tools find the sockets there) and is the
    // clients' parent thread: PR_SET_PDEATHSIG fires when it exits.
    let server = spawn_in(&ns, move || {
        let setup = (|| -> Result<(Socket, StaleClients)> {
            let l = Socket::new(Domain::IPV4, Type::STREAM, None).context("create listener")?;
            l.set_reuse_address(true)?;
            l.bind(&addr.into())
                .with_context(|| format!("bind {addr}"))?;
            l.listen(backlog).context("listen")?;
            let conns = (0..=waiting)
                .map(|_| -> Result<Socket> {
                    let c = Socket::new(Domain::IPV4, Type::STREAM, None)?;
                    c.connect(&addr.into())
                        .with_context(|| format!("connect to {addr}"))?;
                    Ok(c)
                })
                .collect::<Result<Vec<_>>>()?;
            let names = [c"tcpq-client", c"tcpq-pooled"];
            let mut pids = Vec::new();
            for (i, c) in conns.iter().enumerate() {
                let pooled = i == waiting;
                let req: &[u8] = if pooled {
                    b"GET /pooled HTTP/1.1\r\n\r\n"
                } else {
                    b"GET /slow HTTP/1.1\r\n\r\n"
                };
                let name = names[usize::from(pooled)];
                // SAFETY: the child only calls async-signal-safe functions (client_child) and
                // never returns.
                match unsafe { nix::unistd::fork() }.context("fork a client")? {
                    nix::unistd::ForkResult::Child => client_child(c.as_raw_fd(), name, req),
                    nix::unistd::ForkResult::Parent { child } => pids.push(child),
                }
            }
            drop(conns); // each connection is its client's alone
            let pooled = pids.pop().context("no pooled client")?;
            l.set_nonblocking(true)?;
            Ok((l, (pids, pooled)))
        })();
        let l = match setup {
            Ok((l, clients)) => {
                let _ = tx.send(Ok(clients));
                l
            }
            Err(e) => {
                let _ = tx.send(Err(e));
                return;
            }
        };
        // Reads each request; answers only the pooled client's, keeps every connection open.
        let mut kept = Vec::new();
        while !s.load(Ordering::SeqCst) {
            match l.accept() {
                Ok((c, _)) => {
                    let mut c = std::net::TcpStream::from(c);
                    let _ = c.set_nonblocking(false);
                    let _ = c.set_read_timeout(Some(Duration::from_secs(1)));
                    let mut req = [0u8; 256];
                    let n = c.read(&mut req).unwrap_or(0);
                    if req[..n].windows(7).any(|w| w == b"/pooled") {
                        let _ = c.write_all(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok");
                    }
                    kept.push(c);
                }
                Err(_) => thread::sleep(Duration::from_millis(10)),
            }
        }
        drop(kept);
    })?;
    let (waiting_pids, pooled) = rx
        .recv_timeout(Duration::from_secs(5))
        .context("stale-upstream setup did not finish")??;
    facts(
        args,
        json!({"netns": ns.name, "netns_inode": ns.inode(), "laddr": "127.0.0.1",
               "clients": waiting_pids.iter().map(|p| p.as_raw()).collect::<Vec<_>>(), "pooled": pooled.as_raw()}),
    );
    stop.nap(args.duration);
    for c in waiting_pids.iter().chain([&pooled]) {
        let _ = nix::sys::signal::kill(*c, nix::sys::signal::Signal::SIGKILL);
        let _ = nix::sys::wait::waitpid(*c, None);
    }
    server_stop.store(true, Ordering::SeqCst);
    let _ = server.join();
    done_line(
        args,
        stop,
        "stale-upstream",
        json!({"clients": waiting_pids.len()}),
    );
    Ok(())
}

fn failing_upstream(args: &Lab, stop: Stop) -> Result<()> {
    let ns = lab_netns(args)?;
    let dst = SocketAddrV4::new(Ipv4Addr::LOCALHOST, args.port);
    let sources = args.clients.unwrap_or(8);
    let pause_us = 1_000_000 / args.rate().max(1);
    let backlog = args.backlog() as i32;
    let (tx, rx) = std::sync::mpsc::channel::<Result<nix::unistd::Pid>>();
    let done = Arc::new(AtomicBool::new(false));
    let d = done.clone();
    // The thread stays in the namespace while the client runs: it is the client's parent
    // thread (PR_SET_PDEATHSIG fires when it exits).
    let parent = spawn_in(&ns, move || {
        let setup = (|| -> Result<nix::unistd::Pid> {
            let l = Socket::new(Domain::IPV4, Type::STREAM, None).context("create listener")?;
            l.set_reuse_address(true)?;
            l.bind(&SocketAddr::V4(dst).into())
                .with_context(|| format!("bind {dst}"))?;
            l.listen(backlog).context("listen")?;
            // One good connect per source; this side closes first, so each leaves a TIME_WAIT.
            for i in 0..sources {
                let c = Socket::new(Domain::IPV4, Type::STREAM, None)?;
                let from = SocketAddr::new(lab_source(i).into(), 0);
                c.bind(&from.into())
                    .with_context(|| format!("bind {from}"))?;
                c.connect(&SocketAddr::V4(dst).into())
                    .with_context(|| format!("connect to {dst} from {from}"))?;
                let (server_side, _) = l.accept().context("accept")?;
                drop(c);
                thread::sleep(Duration::from_millis(5));
                drop(server_side);
            }
            drop(l); // the upstream goes away: every later connect is refused
            // SAFETY: the child only calls async-signal-safe functions (refused_child) and never
            // returns.
            match unsafe { nix::unistd::fork() }.context("fork the client")? {
                nix::unistd::ForkResult::Child => refused_child(dst, sources, pause_us),
                nix::unistd::ForkResult::Parent { child } => Ok(child),
            }
        })();
        let ok = setup.is_ok();
        let _ = tx.send(setup);
        while ok && !d.load(Ordering::SeqCst) {
            thread::sleep(Duration::from_millis(20));
        }
    })?;
    let client = rx
        .recv_timeout(Duration::from_secs(5))
        .context("failing-upstream setup did not finish")??;
    facts(
        args,
        json!({"netns": ns.name, "netns_inode": ns.inode(), "laddr": "127.0.0.1", "clients": [client.as_raw()], "sources": sources}),
    );
    stop.nap(args.duration);
    let _ = nix::sys::signal::kill(client, nix::sys::signal::Signal::SIGKILL);
    let _ = nix::sys::wait::waitpid(client, None);
    done.store(true, Ordering::SeqCst);
    let _ = parent.join();
    done_line(
        args,
        stop,
        "failing-upstream",
        json!({"sources": sources, "clients": [client.as_raw()]}),
    );
    Ok(())
}

/// A listener (backlog `--backlog`, never accepting) filled by backlog + 1 clients, then one SYN
/// sender per CPU for `--duration` at `--rate` SYNs/s in all (0: as fast as the machine goes).
fn storm(args: &Lab, stop: Stop) -> Result<()> {
    let ns = lab_netns(args)?;
    let addr = SocketAddr::new(Ipv4Addr::LOCALHOST.into(), args.port);
    let server = Server::start(&ns, addr, args.backlog(), 0)?;
    // sk_acceptq_is_full() is `queue > backlog`: backlog + 1 established clients fill it.
    let held = burst(&ns, addr, args.backlog() as usize + 1)?;
    stop.nap(Duration::from_millis(300));
    let senders = thread::available_parallelism()
        .map(|n| n.get())
        .unwrap_or(1) as u32;
    facts(
        args,
        json!({"netns": ns.name, "netns_inode": ns.inode(), "laddr": "127.0.0.1", "senders": senders, "rate": args.rate()}),
    );
    let sent = Arc::new(AtomicU64::new(0));
    let started = Instant::now();
    let deadline = started + args.duration;
    let per_sender = args.rate() as u64 / senders as u64;
    let mut handles = Vec::new();
    for sender in 0..senders {
        let sent = sent.clone();
        let port = args.port;
        handles.push(spawn_in(&ns, move || {
            send_syns(sender, port, deadline, per_sender, &sent, stop)
        })?);
    }
    let mut failure = None;
    for h in handles {
        match h.join() {
            Ok(Ok(Ok(()))) => {}
            Ok(Ok(Err(e))) | Ok(Err(e)) => failure = Some(e),
            Err(_) => failure = Some(anyhow::anyhow!("SYN sender panicked")),
        }
    }
    let secs = started.elapsed().as_secs_f64();
    let n = sent.load(Ordering::Relaxed);
    done_line(
        args,
        stop,
        "storm",
        json!({"syns_sent": n, "seconds": (secs * 100.0).round() / 100.0, "syns_per_s": (n as f64 / secs.max(1e-9)).round()}),
    );
    drop(held);
    drop(server);
    match failure {
        Some(e) => Err(e),
        None => Ok(()),
    }
}
