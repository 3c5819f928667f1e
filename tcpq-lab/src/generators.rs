//! The load generators of the labs: listeners, connect storms, forked clients, nginx, raw SYN
//! senders. Each runs in a lab namespace (`netns::spawn_in`); those that loop honour a `Stop`.
use std::{
    net::{Ipv4Addr, SocketAddr, SocketAddrV4},
    path::PathBuf,
    process::Command,
    sync::{
        Arc,
        atomic::{AtomicBool, AtomicU64, Ordering},
    },
    thread,
    time::{Duration, Instant},
};

use anyhow::{Context as _, Result};
use socket2::{Domain, Socket, Type};

use crate::{
    Stop,
    netns::{NetnsGuard, run_cmd, spawn_in},
};

/// A listener with an explicit backlog that accepts at `accept_rate`/s while `accepting`.
pub struct Server {
    stop: Arc<AtomicBool>,
    pub accepting: Arc<AtomicBool>,
    pub accepted: Arc<AtomicU64>,
    handle: Option<thread::JoinHandle<Result<Result<()>>>>,
}

impl Server {
    pub fn start(
        ns: &NetnsGuard,
        addr: SocketAddr,
        backlog: u32,
        accept_rate: u32,
    ) -> Result<Self> {
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

pub fn connect_nonblocking(dst: SocketAddr) -> Option<Socket> {
    let s = Socket::new(Domain::for_address(dst), Type::STREAM, None).ok()?;
    s.set_nonblocking(true).ok()?;
    match s.connect(&dst.into()) {
        Ok(()) => Some(s),
        Err(e) if e.raw_os_error() == Some(libc::EINPROGRESS) => Some(s),
        Err(_) => None,
    }
}

/// Non-blocking connects to `addr` at `rate`/s from inside `ns` until `deadline`, every socket
/// kept open (up to 20 000) and returned; attempts are counted in `attempts`.
pub fn hold_connects(
    ns: &NetnsGuard,
    addr: SocketAddr,
    rate: u32,
    deadline: Instant,
    attempts: Arc<AtomicU64>,
    stop: Stop,
) -> Result<Vec<Socket>> {
    let client = spawn_in(ns, move || {
        let interval = Duration::from_secs_f64(1.0 / rate.max(1) as f64);
        let mut open = Vec::new();
        while Instant::now() < deadline && !stop.requested() {
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

/// Opens `n` non-blocking connects at once from inside `ns` and keeps them.
pub fn burst(ns: &NetnsGuard, addr: SocketAddr, n: usize) -> Result<Vec<Socket>> {
    spawn_in(ns, move || {
        (0..n)
            .filter_map(|_| connect_nonblocking(addr))
            .collect::<Vec<_>>()
    })?
    .join()
    .map_err(|_| anyhow::anyhow!("client thread panicked"))?
}

/// Blocks in accept() on `fd`, holds each connection 3 s: async-signal-safe calls only (it runs
/// in a forked child of a multi-threaded process).
pub fn worker_loop(fd: i32) -> ! {
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

/// nginx in a lab namespace, stopped (and its files removed) on drop.
pub struct LabNginx {
    dir: PathBuf,
}

/// Where Debian installs nginx (`cargo xtask setup` does).
const NGINX: &str = "/usr/sbin/nginx";

/// The lab's nginx.conf: one worker of `worker_connections`, everything it writes under `dir`,
/// warnings logged (ngx_drain_connections() reports "worker_connections are not enough,
/// reusing connections" at warn, ngx_get_connection() its refusals at alert).
pub fn nginx_conf(
    dir: &std::path::Path,
    port: u16,
    backlog: u32,
    worker_connections: u32,
) -> String {
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
    pub fn start(
        ns: &NetnsGuard,
        port: u16,
        backlog: u32,
        worker_connections: u32,
    ) -> Result<Self> {
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
    pub fn not_enough_lines(&self) -> usize {
        std::fs::read_to_string(self.dir.join("error.log"))
            .map(|log| {
                log.lines()
                    .filter(|l| l.contains("worker_connections are not enough"))
                    .count()
            })
            .unwrap_or(0)
    }

    /// The master's pid, from its pid file (written once it has daemonized).
    pub fn master(&self) -> Option<nix::unistd::Pid> {
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
pub fn client_alive(s: &Socket) -> bool {
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

/// A client process of `stale-upstream`: names itself, keeps only its own connection, sends
/// `req` and then reads until the peer closes (a silent peer: forever). Async-signal-safe calls
/// only: it runs in a forked child of a multi-threaded process.
pub fn client_child(fd: i32, name: &std::ffi::CStr, req: &[u8]) -> ! {
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

/// 127.0.0.`2 + i`: the `i`th source address of `failing-upstream` (any 127/8 address is local).
pub fn lab_source(i: u32) -> Ipv4Addr {
    Ipv4Addr::from(u32::from(Ipv4Addr::new(127, 0, 0, 2)) + i)
}

/// The refused client of `failing-upstream`: names itself, then connects to `dst` from each of
/// `sources` in turn, `pause_us` apart, until killed. Async-signal-safe calls only: it runs in a
/// forked child of a multi-threaded process.
pub fn refused_child(dst: SocketAddrV4, sources: u32, pause_us: u32) -> ! {
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

/// SYNs per `sendmmsg()` call.
pub const STORM_BATCH: usize = 64;

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
pub fn send_syns(
    sender: u32,
    dport: u16,
    deadline: Instant,
    rate: u64,
    sent: &AtomicU64,
    stop: Stop,
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
    while Instant::now() < deadline && !stop.requested() {
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
