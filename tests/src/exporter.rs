//! `tcpq export` under test by raw HTTP clients (tests/tests/exporter.rs): the running
//! exporter and its resource use, its bounds, requests and their parsed answers, and the
//! client socket's view of when the server closed.
use std::{
    fs::File,
    io::{Read, Write},
    net::{Shutdown, TcpListener, TcpStream},
    os::fd::AsRawFd,
    path::PathBuf,
    process::{Child, Stdio},
    sync::{Arc, Barrier},
    thread,
    time::{Duration, Instant, SystemTime, UNIX_EPOCH},
};

use crate::tcpq;

pub const INTERVAL: &str = "500ms";
pub const INTERVAL_S: f64 = 0.5;
/// The exporter's bounds.
pub const HEAD_BOUND: Duration = Duration::from_secs(5);
pub const WRITE_BOUND: Duration = Duration::from_secs(5);
pub const LINGER: Duration = Duration::from_secs(1);
pub const CAP: usize = 64;
/// Slack for a loaded 2-core VM.
pub const MARGIN: Duration = Duration::from_millis(1500);
/// A normal scrape, when nothing holds it up.
pub const SCRAPE_BOUND: Duration = Duration::from_secs(2);
pub const RSS_SLACK_KIB: u64 = 8 * 1024;
pub const FD_SLACK: usize = 16;

pub const GET_METRICS: &[u8] =
    b"GET /metrics HTTP/1.1\r\nHost: tcpq\r\nUser-Agent: exporter-test\r\n\r\n";

/// A running `tcpq export` on a free loopback port; SIGTERM on drop.
pub struct Exporter {
    child: Child,
    pub addr: String,
    log: PathBuf,
}

impl Exporter {
    pub fn start(tag: &str) -> Self {
        let port = TcpListener::bind("127.0.0.1:0")
            .and_then(|l| l.local_addr())
            .expect("a free port")
            .port();
        let addr = format!("127.0.0.1:{port}");
        let log =
            std::env::temp_dir().join(format!("tcpq-exporter-{tag}-{}.log", std::process::id()));
        let child = tcpq()
            .args(["export", "--listen", &addr, "--interval", INTERVAL])
            .stdout(Stdio::null())
            .stderr(File::create(&log).expect("create the exporter's log"))
            .spawn()
            .expect("spawn tcpq export");
        let e = Self { child, addr, log };
        let t = Instant::now();
        loop {
            let up = request(&e.addr, GET_METRICS, Duration::from_secs(5))
                .ok()
                .and_then(|(raw, _)| parse(&raw))
                .is_some_and(|r| r.status == 200 && last_update(&r.body) > 0.0);
            if up {
                break;
            }
            assert!(
                t.elapsed() < Duration::from_secs(30),
                "/metrics never answered: {}",
                e.stderr()
            );
            thread::sleep(Duration::from_millis(200));
        }
        // Let the first intervals' allocations settle before anything is measured.
        thread::sleep(Duration::from_secs(2));
        e
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    pub fn stderr(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// RSS, descriptors, and of them sockets.
    pub fn usage(&self) -> Usage {
        let status = std::fs::read_to_string(format!("/proc/{}/status", self.pid()))
            .expect("the exporter's /proc status");
        let rss_kib = status
            .lines()
            .find_map(|l| l.strip_prefix("VmRSS:"))
            .and_then(|v| v.split_whitespace().next()?.parse().ok())
            .expect("VmRSS");
        let links: Vec<String> = std::fs::read_dir(format!("/proc/{}/fd", self.pid()))
            .expect("the exporter's fds")
            .filter_map(|f| {
                Some(
                    std::fs::read_link(f.ok()?.path())
                        .ok()?
                        .display()
                        .to_string(),
                )
            })
            .collect();
        Usage {
            rss_kib,
            fds: links.len(),
            sockets: links.iter().filter(|l| l.starts_with("socket:")).count(),
            bpf_links: links.iter().filter(|l| l.ends_with("bpf_link")).count(),
        }
    }

    pub fn assert_alive(&mut self) {
        assert!(
            matches!(self.child.try_wait(), Ok(None)),
            "the exporter died: {}",
            self.stderr()
        );
    }

    /// GET /metrics: a complete, fresh page within `SCRAPE_BOUND`.
    pub fn scrape(&self) -> (Response, Duration) {
        let (raw, took) = request(&self.addr, GET_METRICS, Duration::from_secs(15))
            .unwrap_or_else(|e| panic!("scrape: {e}; exporter: {}", self.stderr()));
        let r = parse(&raw)
            .unwrap_or_else(|| panic!("not an HTTP answer: {:?}", String::from_utf8_lossy(&raw)));
        assert_metrics(&r);
        (r, took)
    }

    /// Resources once every hostile connection is past the bounds (sockets back to about
    /// `before`'s, waited for up to head + write + linger): descriptors within `FD_SLACK`, RSS
    /// within `RSS_SLACK_KIB` of `before`. A queue on the exporter's own listener may arm tcpq's
    /// listen family (its bpf_link descriptors, until --quiet-period passes): counted, not leaked.
    pub fn assert_resources(&self, before: Usage, what: &str) {
        let t = Instant::now();
        let mut now = self.usage();
        while now.sockets > before.sockets + 2
            && t.elapsed() < HEAD_BOUND + WRITE_BOUND + LINGER + MARGIN
        {
            thread::sleep(Duration::from_millis(100));
            now = self.usage();
        }
        eprintln!(
            "{what}: exporter RSS {} → {} KiB ({:+}), fds {} → {} (sockets {} → {}, bpf links {} → {}) after {:?}",
            before.rss_kib,
            now.rss_kib,
            now.rss_kib as i64 - before.rss_kib as i64,
            before.fds,
            now.fds,
            before.sockets,
            now.sockets,
            before.bpf_links,
            now.bpf_links,
            t.elapsed(),
        );
        assert!(
            now.sockets <= before.sockets + 2,
            "{what}: sockets still open: {before:?} → {now:?}"
        );
        assert!(
            now.fds <= before.fds + FD_SLACK,
            "{what}: descriptors grew: {before:?} → {now:?}"
        );
        assert!(
            now.rss_kib <= before.rss_kib + RSS_SLACK_KIB,
            "{what}: RSS grew: {before:?} → {now:?}"
        );
    }
}

#[derive(Debug, Clone, Copy)]
pub struct Usage {
    pub rss_kib: u64,
    pub fds: usize,
    pub sockets: usize,
    pub bpf_links: usize,
}

impl Drop for Exporter {
    fn drop(&mut self) {
        // SAFETY: sending a signal to our own child.
        unsafe { libc::kill(self.child.id() as i32, libc::SIGTERM) };
        let t = Instant::now();
        while matches!(self.child.try_wait(), Ok(None)) && t.elapsed() < Duration::from_secs(5) {
            thread::sleep(Duration::from_millis(50));
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
        let _ = std::fs::remove_file(&self.log);
    }
}

#[derive(Debug)]
pub struct Response {
    pub status: u16,
    pub head: String,
    pub body: String,
}

impl Response {
    pub fn header(&self, name: &str) -> Option<&str> {
        self.head.lines().skip(1).find_map(|l| {
            let (n, v) = l.split_once(':')?;
            n.eq_ignore_ascii_case(name).then(|| v.trim())
        })
    }
}

pub fn parse(raw: &[u8]) -> Option<Response> {
    let end = raw.windows(4).position(|w| w == b"\r\n\r\n")?;
    let head = String::from_utf8_lossy(&raw[..end]).into_owned();
    let status = head.strip_prefix("HTTP/1.1 ")?.get(..3)?.parse().ok()?;
    let body = String::from_utf8_lossy(&raw[end + 4..]).into_owned();
    Some(Response { status, head, body })
}

/// Sends `bytes`, reads until the server closes; the answer and the time it took.
pub fn request(addr: &str, bytes: &[u8], limit: Duration) -> std::io::Result<(Vec<u8>, Duration)> {
    let t = Instant::now();
    let mut s = TcpStream::connect(addr)?;
    s.set_read_timeout(Some(limit))?;
    s.write_all(bytes)?;
    let mut raw = Vec::new();
    s.read_to_end(&mut raw)?;
    Ok((raw, t.elapsed()))
}

pub fn last_update(page: &str) -> f64 {
    page.lines()
        .find_map(|l| {
            l.strip_prefix("tcpq_last_update_seconds ")?
                .trim()
                .parse()
                .ok()
        })
        .unwrap_or(0.0)
}

pub fn now_unix() -> f64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .expect("the clock is past 1970")
        .as_secs_f64()
}

/// A complete /metrics page.
pub fn assert_complete(r: &Response) {
    assert_eq!(r.status, 200, "{}", r.head);
    assert_eq!(
        r.header("Content-Length").and_then(|v| v.parse().ok()),
        Some(r.body.len()),
        "{}",
        r.head
    );
    assert!(r.body.ends_with("# EOF\n"), "truncated page");
    assert!(r.body.contains("tcpq_events_total "), "{}", r.body);
}

/// A complete /metrics page, just read, folded in at most an interval (plus slack) ago.
pub fn assert_metrics(r: &Response) {
    assert_complete(r);
    let age = now_unix() - last_update(&r.body);
    assert!(
        age < INTERVAL_S + 1.5,
        "the page was folded in {age:.1} s ago: collection stalled"
    );
}

pub const TCP_CLOSE: u8 = 7;
pub const TCP_CLOSE_WAIT: u8 = 8;

/// The client socket's TCP state (`tcpi_state`).
pub fn tcp_state(s: &TcpStream) -> u8 {
    // SAFETY: tcp_info is plain integers; all zero is a valid value.
    let mut info: libc::tcp_info = unsafe { std::mem::zeroed() };
    let mut len = std::mem::size_of::<libc::tcp_info>() as libc::socklen_t;
    // SAFETY: getsockopt writes at most `len` bytes into `info`, which we own.
    let r = unsafe {
        libc::getsockopt(
            s.as_raw_fd(),
            libc::IPPROTO_TCP,
            libc::TCP_INFO,
            (&mut info as *mut libc::tcp_info).cast(),
            &mut len,
        )
    };
    if r == 0 { info.tcpi_state } else { 0 }
}

/// The server closed its side (FIN received: CLOSE_WAIT; or a reset: CLOSE).
pub fn server_closed(s: &TcpStream) -> bool {
    matches!(tcp_state(s), TCP_CLOSE_WAIT | TCP_CLOSE)
}

/// Polls every socket until the server closed it or `limit` passed: when each was closed,
/// counted from `since`.
pub fn watch_closes(
    socks: &[&TcpStream],
    since: Instant,
    limit: Duration,
) -> Vec<Option<Duration>> {
    let mut closed = vec![None; socks.len()];
    while since.elapsed() < limit && closed.iter().any(Option::is_none) {
        for (s, c) in socks.iter().zip(closed.iter_mut()) {
            if c.is_none() && server_closed(s) {
                *c = Some(since.elapsed());
            }
        }
        thread::sleep(Duration::from_millis(20));
    }
    closed
}

/// What the rest of the answer was, read now (the server has closed).
pub fn rest_of(mut s: &TcpStream) -> Vec<u8> {
    let _ = s.set_read_timeout(Some(Duration::from_secs(2)));
    let mut raw = Vec::new();
    let _ = s.read_to_end(&mut raw);
    raw
}

pub fn max(ds: &[Duration]) -> Duration {
    ds.iter().copied().max().unwrap_or_default()
}

/// `n` scrapers released at once; each one's time.
pub fn concurrent_scrapes(e: &Exporter, n: usize) -> Vec<Duration> {
    let barrier = Arc::new(Barrier::new(n));
    let handles: Vec<_> = (0..n)
        .map(|i| {
            let addr = e.addr.clone();
            let barrier = Arc::clone(&barrier);
            thread::spawn(move || {
                // Half of them ask to keep the connection: the server closes it all the same.
                let req = if i % 2 == 0 {
                    "GET /metrics HTTP/1.1\r\nHost: tcpq\r\nConnection: close\r\n\r\n"
                } else {
                    "GET /metrics HTTP/1.1\r\nHost: tcpq\r\nConnection: keep-alive\r\n\r\n"
                };
                barrier.wait();
                let (raw, took) = request(&addr, req.as_bytes(), Duration::from_secs(20))
                    .unwrap_or_else(|e| panic!("scraper {i}: {e}"));
                let r = parse(&raw).unwrap_or_else(|| panic!("scraper {i}: not HTTP"));
                assert_metrics(&r);
                took
            })
        })
        .collect();
    handles
        .into_iter()
        .map(|h| h.join().expect("a scraper failed"))
        .collect()
}

/// What a hostile request got.
#[derive(Debug, PartialEq)]
pub enum Outcome {
    Status(u16),
    /// Closed (or reset) without an answer.
    Closed,
}

/// Sends `bytes` from a thread of its own (large ones block once the server stops reading),
/// reads until the server closes; the outcome and how long it took.
pub fn hostile(addr: &str, bytes: Vec<u8>, then_close: bool) -> (Outcome, Duration) {
    let t = Instant::now();
    let mut s = TcpStream::connect(addr).expect("connect");
    s.set_read_timeout(Some(Duration::from_secs(15)))
        .expect("read timeout");
    let mut w = s.try_clone().expect("clone a socket");
    let writer = thread::spawn(move || {
        let _ = w.set_write_timeout(Some(Duration::from_secs(15)));
        let _ = w.write_all(&bytes);
        if then_close {
            let _ = w.shutdown(Shutdown::Write);
        }
    });
    let mut raw = Vec::new();
    let read = s.read_to_end(&mut raw);
    let took = t.elapsed();
    drop(s);
    let _ = writer.join();
    if let Err(e) = &read {
        assert!(
            !matches!(
                e.kind(),
                std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
            ),
            "the server neither answered nor closed in 15 s"
        );
    }
    let outcome = match parse(&raw) {
        Some(r) => Outcome::Status(r.status),
        None => {
            assert!(
                raw.is_empty() || raw.starts_with(b"HTTP/1.1 4"),
                "{:?}",
                String::from_utf8_lossy(&raw)
            );
            Outcome::Closed
        }
    };
    (outcome, took)
}

/// A hostile request and what it must get.
pub struct Case {
    pub what: &'static str,
    pub bytes: Vec<u8>,
    /// Close our side once sent.
    pub then_close: bool,
    /// The answer's status; `may_close`: or a close without one.
    pub want: u16,
    pub may_close: bool,
}

/// Deterministic bytes that are not HTTP.
pub fn garbage(n: usize) -> Vec<u8> {
    let mut x: u32 = 0x9e37_79b9;
    (0..n)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 17;
            x ^= x << 5;
            (x >> 24) as u8
        })
        .collect()
}
