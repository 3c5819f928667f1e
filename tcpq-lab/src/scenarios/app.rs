//! Incidents in the application: it accepts slowly, every worker is busy, it closes
//! connections at its own limit (nginx worker_connections), or it leaks CLOSE_WAIT sockets.

use super::*;

pub(super) fn slow_accept(args: &Lab, stop: Stop) -> Result<()> {
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

pub(super) fn workers(args: &Lab, stop: Stop) -> Result<()> {
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

pub(super) fn connection_limit(args: &Lab, stop: Stop) -> Result<()> {
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

pub(super) fn close_wait(args: &Lab, stop: Stop) -> Result<()> {
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
