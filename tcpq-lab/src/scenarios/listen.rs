//! Incidents on the listen path: a full accept queue (SYN and final-ACK phases), a full SYN
//! queue (a SYN flood with cookies on or off) and a connect storm at line rate.

use super::*;

/// Loopback, one namespace. Phase 1 (`ack`, needs nft): clients complete the handshake while
/// their final ACKs are held back, then all ACK at once into a full accept queue. Phase 2
/// (`syn`): a connect storm against a server accepting `accept_rate`/s.
pub(super) fn overflow(args: &Lab, stop: Stop) -> Result<()> {
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
pub(super) fn synflood(args: &Lab, stop: Stop) -> Result<()> {
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

/// A listener (backlog `--backlog`, never accepting) filled by backlog + 1 clients, then one SYN
/// sender per CPU for `--duration` at `--rate` SYNs/s in all (0: as fast as the machine goes).
pub(super) fn storm(args: &Lab, stop: Stop) -> Result<()> {
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
