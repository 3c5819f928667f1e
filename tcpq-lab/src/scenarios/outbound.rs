//! Incidents on the way out: ephemeral ports exhausted, a full conntrack table, an upstream
//! that refuses or times out, and one that never answers (stale ESTABLISHED).

use super::*;

/// One namespace, `ip_local_port_range` of 16 ports and `tcp_tw_reuse=0` inside it, a server on
/// 127.0.0.1:PORT that closes after the client, and a client that connects and closes at once
/// (so TIME_WAIT stays on the client side) until connect() fails with EADDRNOTAVAIL, and keeps
/// trying (every 10 ms) for the rest of --duration.
pub(super) fn ports(args: &Lab, stop: Stop) -> Result<()> {
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

pub(super) fn conntrack(args: &Lab, stop: Stop) -> Result<()> {
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

pub(super) fn failing_upstream(args: &Lab, stop: Stop) -> Result<()> {
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

/// Pids of the `stale-upstream` lab's clients: (waiting on the silent upstream, pooled).
type StaleClients = (Vec<nix::unistd::Pid>, nix::unistd::Pid);

pub(super) fn stale_upstream(args: &Lab, stop: Stop) -> Result<()> {
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
