//! `tcpq lab NAME`: reproducible incidents in network namespaces of their own, so a user can
//! check on their own kernel that tcpq sees what it should. The integration tests use the same
//! generators. Everything a lab creates (namespaces, veth, nft tables) is removed on exit,
//! including on Ctrl-C. Sysctls are only ever set inside the lab's own namespaces.
use std::{
    collections::VecDeque,
    fs::File,
    io::Write as _,
    net::{Ipv4Addr, Ipv6Addr, SocketAddr, SocketAddrV4},
    path::PathBuf,
    process::{Command, Stdio},
    sync::{
        Arc,
        atomic::{AtomicBool, AtomicU64, Ordering},
    },
    thread,
    time::{Duration, Instant},
};

use anyhow::{Context as _, Result, bail};
use nix::sched::{CloneFlags, setns};
use serde_json::json;
use socket2::{Domain, Socket, Type};

use crate::snapshot::netns;

fn stopped() -> bool {
    crate::stop::requested()
}

/// Sleeps in small steps so Ctrl-C is honoured quickly.
fn nap(d: Duration) {
    let end = Instant::now() + d;
    while !stopped() {
        let now = Instant::now();
        if now >= end {
            break;
        }
        thread::sleep((end - now).min(Duration::from_millis(20)));
    }
}

pub use crate::cli::{LabArgs, LabName};

impl LabArgs {
    /// The listen() backlog: given, or the lab's default (small enough to overflow at once).
    pub fn backlog(&self) -> u32 {
        self.backlog.unwrap_or(match self.name {
            LabName::Overflow => 4,
            LabName::Synflood => 16,
            LabName::Ports => 1024,
            LabName::Conntrack => 4096,
            // Their bursts (50 and 100 clients) fill the queue past half its limit without a
            // refusal: a slow application under pressure, not an overflow.
            LabName::SlowAccept => 64,
            LabName::Workers => 128,
            LabName::CloseWait | LabName::StaleUpstream | LabName::FailingUpstream => 256,
            LabName::Storm => 1,
            // nginx's own default (NGX_LISTEN_BACKLOG): the queue is not the limit here.
            LabName::ConnectionLimit => 511,
        })
    }

    /// Connection attempts (storm: SYNs) per second: given, or the lab's default.
    pub fn rate(&self) -> u32 {
        self.rate.unwrap_or(match self.name {
            LabName::Storm => 0,
            _ => 200,
        })
    }
}

fn run_cmd(cmd: &mut Command, what: &str) -> Result<()> {
    let out = cmd.stdin(Stdio::null()).output().with_context(|| {
        format!(
            "{what}: cannot run {:?} (is iproute2/nftables installed?)",
            cmd.get_program()
        )
    })?;
    if !out.status.success() {
        bail!(
            "{what} failed: {}",
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    Ok(())
}

fn ip(args: &[&str]) -> Result<()> {
    run_cmd(
        Command::new("ip").args(args),
        &format!("ip {}", args.join(" ")),
    )
}

fn nft_in(ns: &str, script: &str) -> Result<()> {
    let mut child = Command::new("ip")
        .args(["netns", "exec", ns, "nft", "-f", "-"])
        .stdin(Stdio::piped())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .context("run nft (apt-get install nftables)")?;
    child
        .stdin
        .take()
        .context("nft stdin")?
        .write_all(script.as_bytes())
        .context("write nft script")?;
    let out = child.wait_with_output().context("wait for nft")?;
    if !out.status.success() {
        bail!(
            "nft in namespace {ns} failed: {}",
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    Ok(())
}

pub fn nft_available() -> bool {
    Command::new("nft")
        .arg("--version")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success())
}

/// A named network namespace, deleted on drop when the lab created it.
pub struct NetnsGuard {
    pub name: String,
    created: bool,
}

impl NetnsGuard {
    pub fn create_or_use(name: &str) -> Result<Self> {
        let path = PathBuf::from("/run/netns").join(name);
        if path.exists() {
            return Ok(Self {
                name: name.into(),
                created: false,
            });
        }
        ip(&["netns", "add", name])?;
        let g = Self {
            name: name.into(),
            created: true,
        };
        ip(&["-n", name, "link", "set", "lo", "up"])?;
        Ok(g)
    }
    pub fn path(&self) -> PathBuf {
        PathBuf::from("/run/netns").join(&self.name)
    }
    pub fn inode(&self) -> u32 {
        netns::inode_of(&self.path()).unwrap_or(0)
    }
    pub fn file(&self) -> Result<File> {
        File::open(self.path()).with_context(|| format!("open network namespace {}", self.name))
    }
}

impl Drop for NetnsGuard {
    fn drop(&mut self) {
        if self.created {
            let _ = Command::new("ip")
                .args(["netns", "del", &self.name])
                .stderr(Stdio::null())
                .status();
        }
    }
}

/// Spawns a thread that lives in `ns`.
fn spawn_in<T: Send + 'static>(
    ns: &NetnsGuard,
    f: impl FnOnce() -> T + Send + 'static,
) -> Result<thread::JoinHandle<Result<T>>> {
    let file = ns.file()?;
    let name = ns.name.clone();
    Ok(thread::spawn(move || {
        setns(&file, CloneFlags::CLONE_NEWNET)
            .with_context(|| format!("enter network namespace {name}"))?;
        Ok(f())
    }))
}

/// --somaxconn inside the server's namespace, before the server calls listen(): listen() caps
/// its backlog at the value it reads then (`__sys_listen_socket()`).
fn set_somaxconn(ns: &NetnsGuard, args: &LabArgs) -> Result<()> {
    match args.somaxconn {
        Some(v) => write_sysctl_in(ns, "/proc/sys/net/core/somaxconn", &v.to_string()),
        None => Ok(()),
    }
}

fn write_sysctl_in(ns: &NetnsGuard, path: &'static str, value: &str) -> Result<()> {
    let v = value.to_string();
    let h = spawn_in(ns, move || std::fs::write(path, v))?;
    h.join()
        .map_err(|_| anyhow::anyhow!("sysctl thread panicked"))??
        .with_context(|| format!("set {path} in namespace {}", ns.name))
}

/// A listener with an explicit backlog that accepts at `accept_rate`/s while `accepting`.
struct Server {
    stop: Arc<AtomicBool>,
    accepting: Arc<AtomicBool>,
    accepted: Arc<AtomicU64>,
    handle: Option<thread::JoinHandle<Result<Result<()>>>>,
}

impl Server {
    fn start(ns: &NetnsGuard, addr: SocketAddr, backlog: u32, accept_rate: u32) -> Result<Self> {
        let stop = Arc::new(AtomicBool::new(false));
        let accepting = Arc::new(AtomicBool::new(true));
        let accepted = Arc::new(AtomicU64::new(0));
        let (tx, rx) = std::sync::mpsc::channel::<Result<()>>();
        let (s, a, n) = (stop.clone(), accepting.clone(), accepted.clone());
        let handle = spawn_in(ns, move || -> Result<()> {
            let sock = (|| -> Result<Socket> {
                let sock = Socket::new(Domain::for_address(addr), Type::STREAM, None)
                    .context("create listener")?;
                sock.set_reuse_address(true)?;
                sock.bind(&addr.into())
                    .with_context(|| format!("bind {addr}"))?;
                sock.listen(backlog as i32).context("listen")?;
                sock.set_nonblocking(true)?;
                Ok(sock)
            })();
            let sock = match sock {
                Ok(s) => {
                    let _ = tx.send(Ok(()));
                    s
                }
                Err(e) => {
                    let _ = tx.send(Err(anyhow::anyhow!("{e:#}")));
                    return Ok(());
                }
            };
            let interval = if accept_rate == 0 {
                None
            } else {
                Some(Duration::from_secs_f64(1.0 / accept_rate as f64))
            };
            while !s.load(Ordering::SeqCst) {
                match interval {
                    Some(iv) if a.load(Ordering::SeqCst) => {
                        thread::sleep(iv);
                        if let Ok((conn, _)) = sock.accept() {
                            n.fetch_add(1, Ordering::Relaxed);
                            drop(conn);
                        }
                    }
                    _ => thread::sleep(Duration::from_millis(10)),
                }
            }
            Ok(())
        })?;
        rx.recv_timeout(Duration::from_secs(5))
            .context("server did not start")??;
        Ok(Self {
            stop,
            accepting,
            accepted,
            handle: Some(handle),
        })
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        if let Some(h) = self.handle.take() {
            let _ = h.join();
        }
    }
}

fn connect_nonblocking(dst: SocketAddr) -> Option<Socket> {
    let s = Socket::new(Domain::for_address(dst), Type::STREAM, None).ok()?;
    s.set_nonblocking(true).ok()?;
    match s.connect(&dst.into()) {
        Ok(()) => Some(s),
        Err(e) if e.raw_os_error() == Some(libc::EINPROGRESS) => Some(s),
        Err(_) => None,
    }
}

fn facts(args: &LabArgs, extra: serde_json::Value) {
    let mut v = json!({
        "event": "lab",
        "lab": clap::ValueEnum::to_possible_value(&args.name).map(|v| v.get_name().to_string()).unwrap_or_default(),
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

pub fn run(args: LabArgs) -> Result<()> {
    if nix::unistd::geteuid().as_raw() != 0 {
        bail!("tcpq lab needs root (it creates network namespaces): run it with sudo");
    }
    if args.backlog() == 0 || args.port == 0 {
        bail!("tcpq lab needs a non-zero --port and --backlog");
    }
    crate::stop::install();
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
    match args.name {
        LabName::Overflow => overflow(&args),
        LabName::Synflood => synflood(&args),
        LabName::Ports => ports(&args),
        LabName::Conntrack => conntrack(&args),
        LabName::SlowAccept => slow_accept(&args),
        LabName::Workers => workers(&args),
        LabName::CloseWait => close_wait(&args),
        LabName::StaleUpstream => stale_upstream(&args),
        LabName::FailingUpstream => failing_upstream(&args),
        LabName::Storm => storm(&args),
        LabName::ConnectionLimit => connection_limit(&args),
    }
}

/// Loopback, one namespace. Phase 1 (`ack`, needs nft): clients complete the handshake while
/// their final ACKs are held back, then all ACK at once into a full accept queue. Phase 2
/// (`syn`): a connect storm against a server accepting `accept_rate`/s.
fn overflow(args: &LabArgs) -> Result<()> {
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
    if with_nft && !stopped() {
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
        nap(Duration::from_millis(50));
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
        nap(Duration::from_millis(300));
        nft_in(&ns.name, "delete table inet tcpq_lab")?;
        // Data rides on an ACK: each one completes a handshake into the (full) accept queue.
        for s in &held {
            let _ = s.send(b"x");
        }
        nap(Duration::from_millis(500));
        server.accepting.store(true, Ordering::SeqCst);
    }

    // Phase 2: connect storm, each client socket held for a second then closed.
    let deadline = Instant::now() + args.duration;
    let rate = args.rate().max(1);
    let at = attempts.clone();
    let storm = spawn_in(&ns, move || {
        let interval = Duration::from_secs_f64(1.0 / rate as f64);
        let mut open: VecDeque<(Instant, Socket)> = VecDeque::new();
        while Instant::now() < deadline && !stopped() {
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
    nap(Duration::from_millis(500));
    let accepted = server.accepted.load(Ordering::Relaxed);
    drop(server);
    let done = json!({"event": "lab_done", "lab": "overflow", "connect_attempts": attempts.load(Ordering::Relaxed), "accepted": accepted, "interrupted": stopped()});
    if args.json {
        println!("{done}")
    } else {
        println!("tcpq lab: {done}")
    }
    Ok(())
}

/// Two namespaces over veth: the client's final ACKs are dropped (nft in the client namespace),
/// so every handshake stays half-open in the server's SYN queue until it is full.
fn synflood(args: &LabArgs) -> Result<()> {
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
    let open = hold_connects(&cli, addr, rate, deadline, at)?;
    nap(Duration::from_millis(300));
    drop(server);
    drop(open);
    let done = json!({"event": "lab_done", "lab": "synflood", "connect_attempts": attempts.load(Ordering::Relaxed), "interrupted": stopped()});
    if args.json {
        println!("{done}")
    } else {
        println!("tcpq lab: {done}")
    }
    drop(cli);
    drop(srv);
    Ok(())
}

/// One namespace, `ip_local_port_range` of 16 ports and `tcp_tw_reuse=0` inside it, a server on
/// 127.0.0.1:PORT that closes after the client, and a client that connects and closes at once
/// (so TIME_WAIT stays on the client side) until connect() fails with EADDRNOTAVAIL, and keeps
/// trying (every 10 ms) for the rest of --duration.
fn ports(args: &LabArgs) -> Result<()> {
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
    let stop = Arc::new(AtomicBool::new(false));
    let (tx, rx) = std::sync::mpsc::channel::<Result<()>>();
    let s2 = stop.clone();
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
        while Instant::now() < deadline && !stopped() {
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
    stop.store(true, Ordering::SeqCst);
    let _ = server.join();
    let done = json!({"event": "lab_done", "lab": "ports", "connects_ok": ok, "eaddrnotavail": eaddrnotavail, "other_failures": other, "interrupted": stopped()});
    if args.json {
        println!("{done}")
    } else {
        println!("tcpq lab: {done}")
    }
    Ok(())
}

const CT_MAX: &str = "/proc/sys/net/netfilter/nf_conntrack_max";

/// Restores the global nf_conntrack_max on drop (also when unwinding from a panic).
struct CtMaxGuard {
    original: String,
}

impl CtMaxGuard {
    fn set(value: u32) -> Result<Self> {
        let original = std::fs::read_to_string(CT_MAX)
            .context("read nf_conntrack_max (is nf_conntrack available?)")?
            .trim()
            .to_string();
        std::fs::write(CT_MAX, value.to_string()).context("lower nf_conntrack_max")?;
        Ok(Self { original })
    }
}

impl Drop for CtMaxGuard {
    fn drop(&mut self) {
        let _ = std::fs::write(CT_MAX, &self.original);
    }
}

fn conntrack(args: &LabArgs) -> Result<()> {
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
    let guard = CtMaxGuard::set(args.ct_max)?;
    facts(
        args,
        json!({"netns": ns.name, "netns_inode": ns.inode(), "daddr": "127.0.0.1", "dport": args.port, "rule_port": rule_port, "ct_max": args.ct_max, "ct_max_original": guard.original}),
    );
    let deadline = Instant::now() + args.duration;
    let rate = args.rate().max(1);
    let attempts = Arc::new(AtomicU64::new(0));
    let at = attempts.clone();
    let open = hold_connects(&ns, addr, rate, deadline, at)?;
    nap(Duration::from_millis(200));
    drop(guard); // restore the global maximum before anything else
    drop(open);
    drop(rule_socks);
    drop(server);
    let done = json!({"event": "lab_done", "lab": "conntrack", "connect_attempts": attempts.load(Ordering::Relaxed), "interrupted": stopped()});
    if args.json {
        println!("{done}")
    } else {
        println!("tcpq lab: {done}")
    }
    Ok(())
}

/// Non-blocking connects to `addr` at `rate`/s from inside `ns` until `deadline`, every socket
/// kept open (up to 20 000) and returned; attempts are counted in `attempts`.
fn hold_connects(
    ns: &NetnsGuard,
    addr: SocketAddr,
    rate: u32,
    deadline: Instant,
    attempts: Arc<AtomicU64>,
) -> Result<Vec<Socket>> {
    let client = spawn_in(ns, move || {
        let interval = Duration::from_secs_f64(1.0 / rate.max(1) as f64);
        let mut open = Vec::new();
        while Instant::now() < deadline && !stopped() {
            if open.len() < 20_000
                && let Some(s) = connect_nonblocking(addr)
            {
                open.push(s);
            }
            attempts.fetch_add(1, Ordering::Relaxed);
            thread::sleep(interval);
        }
        open
    })?;
    client
        .join()
        .map_err(|_| anyhow::anyhow!("client thread panicked"))?
}

fn done_line(args: &LabArgs, lab: &str, extra: serde_json::Value) {
    let mut v = json!({"event": "lab_done", "lab": lab, "interrupted": stopped()});
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

fn lab_netns(args: &LabArgs) -> Result<NetnsGuard> {
    let name = args
        .netns
        .clone()
        .unwrap_or_else(|| format!("tcpq-lab-{}", std::process::id()));
    NetnsGuard::create_or_use(&name)
}

/// Opens `n` non-blocking connects at once from inside `ns` and keeps them.
fn burst(ns: &NetnsGuard, addr: SocketAddr, n: usize) -> Result<Vec<Socket>> {
    spawn_in(ns, move || {
        (0..n)
            .filter_map(|_| connect_nonblocking(addr))
            .collect::<Vec<_>>()
    })?
    .join()
    .map_err(|_| anyhow::anyhow!("client thread panicked"))?
}

fn slow_accept(args: &LabArgs) -> Result<()> {
    let ns = lab_netns(args)?;
    set_somaxconn(&ns, args)?;
    let addr = SocketAddr::new(Ipv4Addr::LOCALHOST.into(), args.port);
    let server = Server::start(&ns, addr, args.backlog(), 10)?;
    facts(
        args,
        json!({"netns": ns.name, "netns_inode": ns.inode(), "laddr": "127.0.0.1", "accept_rate": 10, "clients": 50}),
    );
    let held = burst(&ns, addr, 50)?;
    nap(args.duration.max(Duration::from_secs(6)));
    let accepted = server.accepted.load(Ordering::Relaxed);
    drop(held);
    drop(server);
    done_line(args, "slow-accept", json!({"accepted": accepted}));
    Ok(())
}

/// Blocks in accept() on `fd`, holds each connection 3 s: async-signal-safe calls only (it runs
/// in a forked child of a multi-threaded process).
fn worker_loop(fd: i32) -> ! {
    loop {
        // SAFETY: plain syscalls on an inherited descriptor.
        unsafe {
            let c = libc::accept(fd, std::ptr::null_mut(), std::ptr::null_mut());
            if c >= 0 {
                libc::sleep(3);
                libc::close(c);
            }
        }
    }
}

fn workers(args: &LabArgs) -> Result<()> {
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
    nap(args.duration);
    for c in &children {
        let _ = nix::sys::signal::kill(*c, nix::sys::signal::Signal::SIGKILL);
        let _ = nix::sys::wait::waitpid(*c, None);
    }
    drop(held);
    drop(listener);
    done_line(args, "workers", json!({"workers": children.len()}));
    Ok(())
}

/// nginx in a lab namespace, stopped (and its files removed) on drop.
struct LabNginx {
    dir: PathBuf,
}

/// Where Debian installs nginx (`cargo xtask setup` does).
const NGINX: &str = "/usr/sbin/nginx";

/// The lab's nginx.conf: one worker of `worker_connections`, everything it writes under `dir`,
/// warnings logged (ngx_drain_connections() reports "worker_connections are not enough,
/// reusing connections" at warn, ngx_get_connection() its refusals at alert).
fn nginx_conf(dir: &std::path::Path, port: u16, backlog: u32, worker_connections: u32) -> String {
    let d = dir.display();
    let temp = ["body", "proxy", "fastcgi", "uwsgi", "scgi"]
        .map(|t| {
            format!(
                " {t}_temp_path {d}/{t};",
                t = t.replace("body", "client_body")
            )
        })
        .concat();
    format!(
        "worker_processes 1;\npid {d}/nginx.pid;\nerror_log {d}/error.log warn;\nevents {{ worker_connections {worker_connections}; }}\nhttp {{\n access_log off;\n{temp}\n server {{ listen 127.0.0.1:{port} backlog={backlog}; location / {{ return 200 \"ok\\n\"; }} }}\n}}\n"
    )
}

impl LabNginx {
    /// Starts nginx in `ns` on 127.0.0.1:`port` with one worker of `worker_connections`.
    fn start(ns: &NetnsGuard, port: u16, backlog: u32, worker_connections: u32) -> Result<Self> {
        let dir = std::env::temp_dir().join(format!("tcpq-lab-nginx-{}", std::process::id()));
        std::fs::create_dir_all(&dir)
            .with_context(|| format!("create the lab's nginx directory {}", dir.display()))?;
        let conf = dir.join("nginx.conf");
        std::fs::write(&conf, nginx_conf(&dir, port, backlog, worker_connections))
            .with_context(|| format!("write {}", conf.display()))?;
        let lab = Self { dir };
        run_cmd(
            Command::new("ip")
                .args(["netns", "exec", &ns.name, NGINX, "-c"])
                .arg(&conf),
            "start nginx in the lab namespace (apt-get install nginx-light, or cargo xtask setup)",
        )?;
        Ok(lab)
    }

    /// Lines of its error log that say it ran out of connections.
    fn not_enough_lines(&self) -> usize {
        std::fs::read_to_string(self.dir.join("error.log"))
            .map(|log| {
                log.lines()
                    .filter(|l| l.contains("worker_connections are not enough"))
                    .count()
            })
            .unwrap_or(0)
    }

    /// The master's pid, from its pid file (written once it has daemonized).
    fn master(&self) -> Option<nix::unistd::Pid> {
        let text = std::fs::read_to_string(self.dir.join("nginx.pid")).ok()?;
        text.trim().parse().ok().map(nix::unistd::Pid::from_raw)
    }
}

impl Drop for LabNginx {
    fn drop(&mut self) {
        // SIGTERM: nginx's fast shutdown (what `nginx -s stop` sends); the master removes its
        // pid file when it is done, then its files can go.
        if let Some(master) = self.master() {
            let _ = nix::sys::signal::kill(master, nix::sys::signal::Signal::SIGTERM);
        }
        let end = Instant::now() + Duration::from_secs(3);
        while self.dir.join("nginx.pid").exists() && Instant::now() < end {
            thread::sleep(Duration::from_millis(20));
        }
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// One client of `connection-limit`: reads what arrived without blocking; false when the
/// server closed or reset the connection.
fn client_alive(s: &Socket) -> bool {
    let mut buf = [std::mem::MaybeUninit::<u8>::uninit(); 512];
    loop {
        match s.recv(&mut buf) {
            Ok(0) => return false,
            Ok(_) => continue,
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => return true,
            Err(_) => return false,
        }
    }
}

fn connection_limit(args: &LabArgs) -> Result<()> {
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
        while Instant::now() < end && !stopped() {
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
            nap(Duration::from_millis(200));
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
        "connection-limit",
        json!({"connects": connects, "dropped": dropped, "worker_connections_not_enough": not_enough}),
    );
    Ok(())
}

fn close_wait(args: &LabArgs) -> Result<()> {
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
                nap(duration);
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
    done_line(args, "close-wait", json!({}));
    Ok(())
}

/// A client process of `stale-upstream`: names itself, keeps only its own connection, sends
/// `req` and then reads until the peer closes (a silent peer: forever). Async-signal-safe calls
/// only: it runs in a forked child of a multi-threaded process.
fn client_child(fd: i32, name: &std::ffi::CStr, req: &[u8]) -> ! {
    // SAFETY: plain syscalls on inherited descriptors and memory prepared before fork().
    unsafe {
        // Killed with the thread that forked it, even when the lab itself is SIGKILLed.
        libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL);
        libc::prctl(libc::PR_SET_NAME, name.as_ptr());
        for other in 3..1024 {
            if other != fd {
                libc::close(other);
            }
        }
        libc::send(fd, req.as_ptr().cast(), req.len(), 0);
        let mut buf = [0u8; 256];
        while libc::recv(fd, buf.as_mut_ptr().cast(), buf.len(), 0) > 0 {}
        libc::_exit(0)
    }
}

/// Pids of the `stale-upstream` lab's clients: (waiting on the silent upstream, pooled).
type StaleClients = (Vec<nix::unistd::Pid>, nix::unistd::Pid);

fn stale_upstream(args: &LabArgs) -> Result<()> {
    use std::io::{Read as _, Write as _};
    use std::os::fd::AsRawFd as _;
    let ns = lab_netns(args)?;
    let addr = SocketAddr::new(Ipv4Addr::LOCALHOST.into(), args.port);
    let waiting = args.clients.unwrap_or(3) as usize;
    let backlog = args.backlog() as i32;
    let stop = Arc::new(AtomicBool::new(false));
    let (tx, rx) = std::sync::mpsc::channel::<Result<StaleClients>>();
    let s = stop.clone();
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
    nap(args.duration);
    for c in waiting_pids.iter().chain([&pooled]) {
        let _ = nix::sys::signal::kill(*c, nix::sys::signal::Signal::SIGKILL);
        let _ = nix::sys::wait::waitpid(*c, None);
    }
    stop.store(true, Ordering::SeqCst);
    let _ = server.join();
    done_line(
        args,
        "stale-upstream",
        json!({"clients": waiting_pids.len()}),
    );
    Ok(())
}

/// 127.0.0.`2 + i`: the `i`th source address of `failing-upstream` (any 127/8 address is local).
fn lab_source(i: u32) -> Ipv4Addr {
    Ipv4Addr::from(u32::from(Ipv4Addr::new(127, 0, 0, 2)) + i)
}

/// The refused client of `failing-upstream`: names itself, then connects to `dst` from each of
/// `sources` in turn, `pause_us` apart, until killed. Async-signal-safe calls only: it runs in a
/// forked child of a multi-threaded process.
fn refused_child(dst: SocketAddrV4, sources: u32, pause_us: u32) -> ! {
    let sin = |a: Ipv4Addr, port: u16| libc::sockaddr_in {
        sin_family: libc::AF_INET as libc::sa_family_t,
        sin_port: port.to_be(),
        sin_addr: libc::in_addr {
            s_addr: u32::from(a).to_be(),
        },
        sin_zero: [0; 8],
    };
    let to = sin(*dst.ip(), dst.port());
    let len = std::mem::size_of::<libc::sockaddr_in>() as libc::socklen_t;
    // SAFETY: plain syscalls on stack memory prepared here; the name is a NUL-terminated literal.
    unsafe {
        libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL);
        libc::prctl(libc::PR_SET_NAME, c"tcpq-client".as_ptr());
        loop {
            for i in 0..sources {
                let from = sin(lab_source(i), 0);
                let fd = libc::socket(libc::AF_INET, libc::SOCK_STREAM, 0);
                if fd < 0 {
                    libc::_exit(1);
                }
                libc::bind(fd, (&from as *const libc::sockaddr_in).cast(), len);
                libc::connect(fd, (&to as *const libc::sockaddr_in).cast(), len);
                libc::close(fd);
                libc::usleep(pause_us);
            }
        }
    }
}

fn failing_upstream(args: &LabArgs) -> Result<()> {
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
    nap(args.duration);
    let _ = nix::sys::signal::kill(client, nix::sys::signal::Signal::SIGKILL);
    let _ = nix::sys::wait::waitpid(client, None);
    done.store(true, Ordering::SeqCst);
    let _ = parent.join();
    done_line(
        args,
        "failing-upstream",
        json!({"sources": sources, "clients": [client.as_raw()]}),
    );
    Ok(())
}

/// SYNs per `sendmmsg()` call.
const STORM_BATCH: usize = 64;

/// Fills `pkt` with an IPv4 SYN from client number `i` of sender `sender` (127.x.y.z, a port
/// of its own) to 127.0.0.1:`dport`. The kernel fills the IP checksum (IP_HDRINCL); the TCP
/// checksum is computed here.
pub fn storm_syn(pkt: &mut [u8; 40], sender: u32, i: u32, dport: u16) {
    let src = [
        127,
        1 + ((sender * 61 + (i >> 16)) % 250) as u8,
        (i >> 8) as u8,
        i as u8,
    ];
    let dst = [127u8, 0, 0, 1];
    let sport = 1024 + (i % 60_000) as u16;
    pkt.fill(0);
    pkt[0] = 0x45; // IPv4, 20-byte header
    pkt[2..4].copy_from_slice(&40u16.to_be_bytes());
    pkt[8] = 64; // TTL
    pkt[9] = 6; // TCP
    pkt[12..16].copy_from_slice(&src);
    pkt[16..20].copy_from_slice(&dst);
    let tcp = &mut pkt[20..40];
    tcp[0..2].copy_from_slice(&sport.to_be_bytes());
    tcp[2..4].copy_from_slice(&dport.to_be_bytes());
    tcp[4..8].copy_from_slice(&(i | 1).to_be_bytes()); // sequence number
    tcp[12] = 5 << 4; // data offset: 20 bytes
    tcp[13] = 0x02; // SYN
    tcp[14..16].copy_from_slice(&64240u16.to_be_bytes());
    // Pseudo header (src, dst, protocol, TCP length) plus the TCP header.
    let mut sum: u32 = 6 + 20;
    for pair in src.chunks(2).chain(dst.chunks(2)).chain(tcp.chunks(2)) {
        sum += u32::from(u16::from_be_bytes([pair[0], pair[1]]));
    }
    while sum >> 16 != 0 {
        sum = (sum & 0xffff) + (sum >> 16);
    }
    tcp[16..18].copy_from_slice(&(!(sum as u16)).to_be_bytes());
}

/// Sends SYNs in batches until `deadline` (or a stop), at most `rate` a second (0: no limit).
fn send_syns(
    sender: u32,
    dport: u16,
    deadline: Instant,
    rate: u64,
    sent: &AtomicU64,
) -> Result<()> {
    // SAFETY: plain socket(2) call; the descriptor is owned by `fd` below.
    let raw = unsafe { libc::socket(libc::AF_INET, libc::SOCK_RAW, libc::IPPROTO_RAW) };
    if raw < 0 {
        return Err(std::io::Error::last_os_error()).context("open a raw IPv4 socket");
    }
    // SAFETY: `raw` is a fresh descriptor nobody else owns.
    let fd = unsafe { <std::os::fd::OwnedFd as std::os::fd::FromRawFd>::from_raw_fd(raw) };
    let dst = libc::sockaddr_in {
        sin_family: libc::AF_INET as libc::sa_family_t,
        sin_port: 0,
        sin_addr: libc::in_addr {
            s_addr: u32::from_ne_bytes([127, 0, 0, 1]),
        },
        sin_zero: [0; 8],
    };
    let mut pkts = [[0u8; 40]; STORM_BATCH];
    // The headers point into `pkts`, which stays in place: built once, refilled in place.
    let mut iovs: Vec<libc::iovec> = pkts
        .iter_mut()
        .map(|p| libc::iovec {
            iov_base: p.as_mut_ptr().cast(),
            iov_len: p.len(),
        })
        .collect();
    let mut msgs: Vec<libc::mmsghdr> = iovs
        .iter_mut()
        .map(|iov| {
            // SAFETY: msghdr is plain C data; all-zero is a valid empty header.
            let mut h: libc::msghdr = unsafe { std::mem::zeroed() };
            h.msg_name = (&dst as *const libc::sockaddr_in).cast_mut().cast();
            h.msg_namelen = std::mem::size_of::<libc::sockaddr_in>() as u32;
            h.msg_iov = iov;
            h.msg_iovlen = 1;
            libc::mmsghdr {
                msg_hdr: h,
                msg_len: 0,
            }
        })
        .collect();
    let started = Instant::now();
    let mut i: u32 = 0;
    let mut total: u64 = 0;
    while Instant::now() < deadline && !stopped() {
        for iov in &iovs {
            // SAFETY: each iovec points at one 40-byte packet of `pkts`, alive for the loop and
            // written only here, between sendmmsg() calls.
            let p = unsafe { &mut *iov.iov_base.cast::<[u8; 40]>() };
            storm_syn(p, sender, i, dport);
            i = i.wrapping_add(1);
        }
        // SAFETY: `msgs` points at STORM_BATCH valid headers whose buffers outlive the call.
        let n = unsafe {
            libc::sendmmsg(
                std::os::fd::AsRawFd::as_raw_fd(&fd),
                msgs.as_mut_ptr(),
                msgs.len() as u32,
                0,
            )
        };
        if n < 0 {
            let e = std::io::Error::last_os_error();
            if e.raw_os_error() == Some(libc::ENOBUFS) || e.raw_os_error() == Some(libc::EAGAIN) {
                continue;
            }
            return Err(e).context("send SYNs (sendmmsg on a raw socket)");
        }
        total += n as u64;
        sent.fetch_add(n as u64, Ordering::Relaxed);
        if rate > 0 {
            let due = Duration::from_secs_f64(total as f64 / rate as f64);
            if let Some(ahead) = due.checked_sub(started.elapsed()) {
                thread::sleep(ahead);
            }
        }
    }
    Ok(())
}

/// A listener (backlog `--backlog`, never accepting) filled by backlog + 1 clients, then one SYN
/// sender per CPU for `--duration` at `--rate` SYNs/s in all (0: as fast as the machine goes).
fn storm(args: &LabArgs) -> Result<()> {
    let ns = lab_netns(args)?;
    let addr = SocketAddr::new(Ipv4Addr::LOCALHOST.into(), args.port);
    let server = Server::start(&ns, addr, args.backlog(), 0)?;
    // sk_acceptq_is_full() is `queue > backlog`: backlog + 1 established clients fill it.
    let held = burst(&ns, addr, args.backlog() as usize + 1)?;
    nap(Duration::from_millis(300));
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
            send_syns(sender, port, deadline, per_sender, &sent)
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

#[cfg(test)]
mod tests {
    use super::*;

    /// The one's-complement sum over the pseudo header and the TCP header of a correct
    /// segment is 0xffff.
    fn tcp_sum(pkt: &[u8; 40]) -> u32 {
        let mut sum: u32 = 6 + 20;
        for pair in pkt[12..20].chunks(2).chain(pkt[20..40].chunks(2)) {
            sum += u32::from(u16::from_be_bytes([pair[0], pair[1]]));
        }
        while sum >> 16 != 0 {
            sum = (sum & 0xffff) + (sum >> 16);
        }
        sum
    }

    #[test]
    fn the_nginx_lab_has_one_small_worker_and_its_own_files() {
        let c = nginx_conf(std::path::Path::new("/tmp/x"), 8080, 511, 32);
        assert!(c.starts_with("worker_processes 1;"), "{c}");
        assert!(c.contains("events { worker_connections 32; }"), "{c}");
        assert!(c.contains("error_log /tmp/x/error.log warn;"), "{c}");
        assert!(
            c.contains(" client_body_temp_path /tmp/x/client_body;"),
            "{c}"
        );
        assert!(c.contains(" fastcgi_temp_path /tmp/x/fastcgi;"), "{c}");
        assert!(c.contains("listen 127.0.0.1:8080 backlog=511;"), "{c}");
    }

    #[test]
    fn storm_syns_are_valid_and_from_distinct_clients() {
        let mut seen = std::collections::HashSet::new();
        let mut pkt = [0u8; 40];
        for sender in 0..2 {
            for i in (0..2_000_000u32).step_by(997) {
                storm_syn(&mut pkt, sender, i, 8080);
                assert_eq!(tcp_sum(&pkt), 0xffff, "checksum of client {i}");
                assert_eq!(pkt[33], 0x02, "SYN only");
                assert_eq!(u16::from_be_bytes([pkt[22], pkt[23]]), 8080);
                assert_eq!(pkt[12], 127);
                assert!(seen.insert((pkt[12..16].to_vec(), pkt[20], pkt[21])));
            }
        }
    }
}
