//! The live modes under churn (issue 19, item 2): while `top --json` and `export` run, network
//! namespaces are created and destroyed ~100 times a second for 30 s, each by a short-lived
//! process (its pid soon reused) with a listener in it — tier 0 discovers them, reads them and
//! loses them mid-read. Nothing crashes, frames keep coming, no descriptor or memory growth
//! once the churn stops, and no row of a dead namespace stays.
use std::{
    collections::HashSet,
    process::{Command, Stdio},
    time::{Duration, Instant},
};

use tcpq_tests::*;

fn alive(pid: u32) -> bool {
    std::fs::metadata(format!("/proc/{pid}")).is_ok()
}

/// A child in a network namespace of its own with a listener, gone after `life`.
fn spawn_namespace(life: Duration) -> libc::pid_t {
    let nanos = life.as_nanos() as libc::c_long;
    // SAFETY: the child only makes async-signal-safe system calls (unshare, socket, bind, listen,
    // nanosleep, _exit) before it exits; the parent reaps it.
    unsafe {
        let pid = libc::fork();
        if pid == 0 {
            if libc::unshare(libc::CLONE_NEWNET) == 0 {
                let fd = libc::socket(libc::AF_INET, libc::SOCK_STREAM, 0);
                let addr = libc::sockaddr_in {
                    sin_family: libc::AF_INET as libc::sa_family_t,
                    sin_port: 8080u16.to_be(),
                    sin_addr: libc::in_addr { s_addr: 0 },
                    sin_zero: [0; 8],
                };
                libc::bind(
                    fd,
                    &addr as *const libc::sockaddr_in as *const libc::sockaddr,
                    std::mem::size_of::<libc::sockaddr_in>() as libc::socklen_t,
                );
                libc::listen(fd, 16);
                let ts = libc::timespec {
                    tv_sec: nanos / 1_000_000_000,
                    tv_nsec: nanos % 1_000_000_000,
                };
                libc::nanosleep(&ts, std::ptr::null_mut());
            }
            libc::_exit(0);
        }
        pid
    }
}

fn reap() -> usize {
    let mut n = 0;
    loop {
        // SAFETY: waitpid on our own children, non-blocking.
        let r = unsafe { libc::waitpid(-1, std::ptr::null_mut(), libc::WNOHANG) };
        if r <= 0 {
            return n;
        }
        n += 1;
    }
}

#[test]
fn namespaces_churning_a_hundred_a_second_leave_nothing_behind() {
    if skip_unless_root("churn") {
        return;
    }
    let top = TopJson::start("500ms");
    let addr = "127.0.0.1:19466";
    let mut export = tcpq()
        .args(["export", "--listen", addr, "--interval", "500ms"])
        .stderr(Stdio::null())
        .spawn()
        .expect("spawn tcpq export");
    let t = Instant::now();
    while scrape(addr).is_none() && t.elapsed() < Duration::from_secs(15) {
        std::thread::sleep(Duration::from_millis(200));
    }
    top.next();
    std::thread::sleep(Duration::from_secs(2)); // both settled: their baseline
    while top.frames.try_recv().is_ok() {}
    let pids = [top.child.id(), export.id()];
    let before: Vec<(usize, u64)> = pids
        .iter()
        .map(|p| (fd_count(*p), rss_kib(*p).unwrap_or(0)))
        .collect();

    // ~100 namespaces a second for 30 s, each living 300 ms.
    let started = Instant::now();
    let (mut spawned, mut reaped) = (0usize, 0usize);
    let mut frames = Vec::new();
    let mut seen_ns: HashSet<u64> = HashSet::new();
    let mut most_watched = 0;
    while started.elapsed() < Duration::from_secs(30) {
        let due = (started.elapsed().as_millis() / 10) as usize;
        while spawned < due {
            if spawn_namespace(Duration::from_millis(300)) > 0 {
                spawned += 1;
            } else {
                break;
            }
        }
        reaped += reap();
        while let Ok(f) = top.frames.try_recv() {
            most_watched = most_watched.max(f["namespaces"].as_u64().unwrap_or(0));
            for l in f["listeners"].as_array().into_iter().flatten() {
                if let Some(ns) = l["netns"].as_u64() {
                    seen_ns.insert(ns);
                }
            }
            frames.push(f);
        }
        std::thread::sleep(Duration::from_millis(5));
        for p in pids {
            assert!(alive(p), "tcpq {p} died during the churn");
        }
    }
    let deadline = Instant::now() + Duration::from_secs(2);
    while Instant::now() < deadline {
        reaped += reap();
        std::thread::sleep(Duration::from_millis(50));
    }
    eprintln!(
        "churn: {spawned} namespaces in 30 s ({reaped} reaped), {} frames, at most {most_watched} namespaces watched at once, {} with a listener row",
        frames.len(),
        seen_ns.len()
    );
    // ~30 live at any time (300 ms each, 100/s): tier 0 found and read them while they lived.
    assert!(
        most_watched >= 10,
        "tier 0 watched the churning namespaces: at most {most_watched} at once"
    );
    assert!(spawned >= 2000, "the churn ran: {spawned} namespaces");
    assert!(
        frames.len() >= 50,
        "top kept its 500 ms frames during the churn: {}",
        frames.len()
    );

    // Settled: the kept sockets of dead namespaces are let go, rows of dead namespaces age out.
    std::thread::sleep(Duration::from_secs(4));
    while top.frames.try_recv().is_ok() {}
    let last = top.next();
    let alive_ns: HashSet<u64> = std::fs::read_dir("/proc")
        .into_iter()
        .flatten()
        .flatten()
        .filter_map(|e| {
            use std::os::unix::fs::MetadataExt as _;
            std::fs::metadata(e.path().join("ns/net"))
                .ok()
                .map(|m| m.ino())
        })
        .collect();
    for l in last["listeners"].as_array().into_iter().flatten() {
        let ns = l["netns"].as_u64().unwrap_or(0);
        assert!(alive_ns.contains(&ns), "row of a dead namespace {ns}: {l}");
    }
    for (p, (fds0, rss0)) in pids.iter().zip(&before) {
        let (fds, rss) = (fd_count(*p), rss_kib(*p).unwrap_or(0));
        eprintln!("churn: tcpq {p}: fds {fds0} → {fds}, RSS {rss0} → {rss} KiB");
        assert!(fds <= fds0 + 8, "fd growth in {p}: {fds0} → {fds}");
        assert!(
            rss <= rss0 + 16 * 1024,
            "memory growth in {p}: {rss0} → {rss} KiB"
        );
    }
    assert!(scrape(addr).is_some(), "/metrics still answers");
    let _ = Command::new("kill")
        .args(["-TERM", &export.id().to_string()])
        .status();
    let _ = export.wait();
}
