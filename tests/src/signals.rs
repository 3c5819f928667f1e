//! How tests/tests/signals.rs ends a running tcpq and sees it leave: the process started and
//! waited for, its programs' attachments before and after, the pseudo-terminal and the stalled
//! pipe it is put on, and the checks its `root_test!`s run.
use std::{
    collections::HashSet,
    ffi::OsStr,
    fmt::Debug,
    io::Read as _,
    os::{
        fd::{AsRawFd as _, FromRawFd as _, OwnedFd},
        unix::process::CommandExt as _,
    },
    process::{Child, Stdio},
    sync::{
        Arc, Mutex,
        atomic::{AtomicBool, Ordering},
        mpsc,
    },
    time::{Duration, Instant},
};

use crate::{AttachedProgram, BackgroundLab, Netns, attached_tcpq_programs, bpf_programs_of, tcpq};

/// How long tcpq may take to leave.
const LIMIT: Duration = Duration::from_secs(1);

/// The process has left: no /proc entry, or every thread of it a zombie (the last thread to
/// exit releases its descriptors, and with them its BPF links, before it becomes one; the
/// leader alone being a zombie is not enough).
fn gone(pid: u32) -> bool {
    let Ok(tasks) = std::fs::read_dir(format!("/proc/{pid}/task")) else {
        return true;
    };
    tasks.filter_map(Result::ok).all(|t| {
        let stat = std::fs::read_to_string(t.path().join("stat")).unwrap_or_default();
        let state = stat
            .rsplit_once(')')
            .and_then(|(_, rest)| rest.split_whitespace().next());
        matches!(state, None | Some("Z" | "X"))
    })
}

/// Where a process that did not leave is: every thread's state and kernel wait channel.
fn whereabouts(pid: u32) -> String {
    let mut out = Vec::new();
    if let Ok(tasks) = std::fs::read_dir(format!("/proc/{pid}/task")) {
        for t in tasks.filter_map(Result::ok) {
            let p = t.path();
            let stat = std::fs::read_to_string(p.join("stat")).unwrap_or_default();
            let wchan = std::fs::read_to_string(p.join("wchan")).unwrap_or_default();
            out.push(format!("{} wchan={wchan}", stat.trim()));
        }
    }
    out.join("\n")
}

/// Waits (polling every 2 ms) until `pid` is gone or LIMIT has passed since `since`; the time
/// it took. Not gone in time: where it is, then SIGKILL, and the test fails.
pub fn assert_leaves(what: &str, pid: u32, since: Instant) -> Duration {
    while !gone(pid) {
        if since.elapsed() > LIMIT {
            let at = whereabouts(pid);
            // SAFETY: kill(2) on the pid of the tcpq this test started.
            unsafe { libc::kill(pid as i32, libc::SIGKILL) };
            panic!("{what}: tcpq (pid {pid}) still running {LIMIT:?} later:\n{at}");
        }
        std::thread::sleep(Duration::from_millis(2));
    }
    let took = since.elapsed();
    eprintln!("{what}: tcpq left after {took:?}");
    took
}

/// tcpq's attachments that belong to process `pid`, from the kernel's lists.
fn attached_by(ours: &HashSet<u32>) -> Vec<AttachedProgram> {
    attached_tcpq_programs()
        .into_iter()
        .filter(|a| ours.contains(&a.prog_id))
        .collect()
}

/// The programs `pid` holds, after checking that the kernel lists some of them as attached
/// (so that the check after it left can fail).
pub fn programs_attached_by(what: &str, pid: u32) -> HashSet<u32> {
    let ours = bpf_programs_of(pid);
    let attached = attached_by(&ours);
    assert!(
        !attached.is_empty(),
        "{what}: no attached tcpq program of pid {pid} in the kernel's lists (it holds programs {ours:?}; attached tcpq programs: {:?})",
        attached_tcpq_programs()
    );
    eprintln!(
        "{what}: {} attachments of tcpq's programs listed as BPF links while it runs: {:?}",
        attached.len(),
        attached.iter().map(|a| a.name.as_str()).collect::<Vec<_>>()
    );
    ours
}

pub fn assert_detached(what: &str, ours: &HashSet<u32>) {
    let left = attached_by(ours);
    assert!(
        left.is_empty(),
        "{what}: still attached after tcpq left: {left:?}"
    );
}

/// tcpq with its stdout drained (a full pipe would block it) and stderr on a channel.
pub struct Running {
    child: Child,
    stderr: mpsc::Receiver<String>,
}

impl Running {
    /// Starts `tcpq ARGS` and returns once stderr shows a line starting with `ready`.
    fn start<S: AsRef<OsStr> + Debug>(args: &[S], ready: &str) -> Self {
        Self::start_to(args, ready, None)
    }

    /// Like `start`, with stdout to `stdout` instead of a pipe drained by the test.
    fn start_to<S: AsRef<OsStr> + Debug>(args: &[S], ready: &str, stdout: Option<OwnedFd>) -> Self {
        let drained = stdout.is_none();
        let mut cmd = tcpq();
        cmd.args(args)
            .stdin(Stdio::null())
            .stdout(stdout.map_or_else(Stdio::piped, Stdio::from));
        let started = tcpq_lab::tcpq::start(
            &mut cmd,
            |line| line.starts_with(ready),
            Duration::from_secs(60),
        )
        .unwrap_or_else(|e| panic!("tcpq {args:?} did not start: {e:#}"));
        let mut child = started.child;
        if drained {
            let mut stdout = child.stdout.take().unwrap();
            std::thread::spawn(move || {
                let mut sink = Vec::new();
                let _ = stdout.read_to_end(&mut sink);
            });
        }
        Self {
            child,
            stderr: started.stderr,
        }
    }

    fn pid(&self) -> u32 {
        self.child.id()
    }
}

impl Drop for Running {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// `tcpq ARGS` during a SYN storm (one raw sender per CPU, as fast as the machine goes, at a
/// full listener) gets `sig`: it leaves within LIMIT and its programs are detached.
pub fn leaves_on_signal_during_a_storm<S: AsRef<OsStr> + Debug>(
    what: &str,
    args: &[S],
    ready: &str,
    sig: libc::c_int,
) {
    let ns = Netns::new("sigst");
    let _storm = BackgroundLab::start(&ns, &["storm", "--port", "9811", "--duration", "60"]);
    let mut tcpq = Running::start(args, ready);
    std::thread::sleep(Duration::from_millis(1500)); // the storm reaches tcpq's loop
    sends_and_sees_it_leave(what, &mut tcpq, sig);
}

/// Sends `sig` to a running tcpq whose programs are attached: it leaves within LIMIT, with
/// success, and none of its programs stays attached.
fn sends_and_sees_it_leave(what: &str, tcpq: &mut Running, sig: libc::c_int) {
    let ours = programs_attached_by(what, tcpq.pid());
    let since = Instant::now();
    // SAFETY: kill(2) on the pid of the tcpq this test started.
    unsafe { libc::kill(tcpq.pid() as i32, sig) };
    let took = assert_leaves(what, tcpq.pid(), since);
    let status = tcpq.child.wait().unwrap();
    let errors: Vec<String> = tcpq.stderr.try_iter().collect();
    assert!(
        status.success(),
        "{what}: tcpq exited with {status} after {took:?}: {errors:?}"
    );
    assert_detached(what, &ours);
}

/// Polls `check` every 100 ms for up to `limit`.
pub fn eventually(limit: Duration, mut check: impl FnMut() -> bool) -> bool {
    let t = Instant::now();
    while t.elapsed() < limit {
        if check() {
            return true;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    false
}

/// A pseudo-terminal: the master end (the "terminal emulator") and the slave end.
fn open_pty() -> (OwnedFd, OwnedFd) {
    let (mut master, mut slave) = (-1, -1);
    let size = libc::winsize {
        ws_row: 50,
        ws_col: 160,
        ws_xpixel: 0,
        ws_ypixel: 0,
    };
    // SAFETY: openpty writes two descriptors to the given ints; a null name and termios are
    // allowed, and the winsize outlives the call.
    let rc = unsafe {
        libc::openpty(
            &mut master,
            &mut slave,
            std::ptr::null_mut(),
            std::ptr::null(),
            &size,
        )
    };
    assert_eq!(rc, 0, "openpty: {}", std::io::Error::last_os_error());
    for fd in [master, slave] {
        // SAFETY: fcntl on a descriptor just opened. Close-on-exec: a child that inherited the
        // master (tcpq itself, a lab) would keep the terminal open after the test closes it.
        unsafe { libc::fcntl(fd, libc::F_SETFD, libc::FD_CLOEXEC) };
    }
    // SAFETY: both descriptors were just opened by openpty and are owned by nothing else.
    unsafe { (OwnedFd::from_raw_fd(master), OwnedFd::from_raw_fd(slave)) }
}

/// Reads the master end (as a terminal emulator would) until told to stop; polls with a
/// timeout so that no read is in progress when the master is closed (a blocked read would
/// keep the terminal open).
struct Screen {
    text: Arc<Mutex<Vec<u8>>>,
    stop: Arc<AtomicBool>,
    reader: Option<std::thread::JoinHandle<()>>,
}

impl Screen {
    fn watch(master: &OwnedFd) -> Self {
        let fd = master.as_raw_fd();
        let text = Arc::new(Mutex::new(Vec::new()));
        let stop = Arc::new(AtomicBool::new(false));
        let (t, s) = (Arc::clone(&text), Arc::clone(&stop));
        let reader = std::thread::spawn(move || {
            let mut buf = [0u8; 4096];
            while !s.load(Ordering::SeqCst) {
                let mut p = libc::pollfd {
                    fd,
                    events: libc::POLLIN,
                    revents: 0,
                };
                // SAFETY: one live pollfd; the master stays open until this thread is joined.
                if unsafe { libc::poll(&mut p, 1, 20) } <= 0 || p.revents & libc::POLLIN == 0 {
                    continue;
                }
                // SAFETY: reads at most buf.len() bytes into the live buffer.
                let n = unsafe { libc::read(fd, buf.as_mut_ptr().cast(), buf.len()) };
                if n <= 0 {
                    std::thread::sleep(Duration::from_millis(20));
                    continue;
                }
                if let Ok(mut t) = t.lock() {
                    t.extend_from_slice(&buf[..n as usize]);
                }
            }
        });
        Self {
            text,
            stop,
            reader: Some(reader),
        }
    }

    fn shows(&self, what: &str) -> bool {
        self.text
            .lock()
            .map(|t| String::from_utf8_lossy(&t).contains(what))
            .unwrap_or(false)
    }

    fn stop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        if let Some(r) = self.reader.take() {
            let _ = r.join();
        }
    }
}

impl Drop for Screen {
    fn drop(&mut self) {
        self.stop(); // before the master's descriptor number can be reused
    }
}

/// `tcpq ARGS` on a pty (its controlling terminal when `controlling`, else only its stdin,
/// stdout and stderr, so that no SIGHUP comes and the hangup itself must end it), mid-incident;
/// the master end is closed: tcpq leaves within LIMIT with its programs detached.
pub fn leaves_when_its_pty_is_closed(what: &str, args: &[&str], ready: &str, controlling: bool) {
    let (master, slave) = open_pty();
    let mut cmd = tcpq();
    cmd.args(args)
        .env("TERM", "xterm-256color")
        .stdin(Stdio::from(slave.try_clone().unwrap()))
        .stdout(Stdio::from(slave.try_clone().unwrap()))
        .stderr(Stdio::from(slave.try_clone().unwrap()));
    if controlling {
        // SAFETY: between fork and exec only async-signal-safe calls: setsid(2) makes a new
        // session, ioctl(TIOCSCTTY) makes stdin (the pty) its controlling terminal.
        unsafe {
            cmd.pre_exec(|| {
                if libc::setsid() < 0 || libc::ioctl(0, libc::TIOCSCTTY, 0) < 0 {
                    return Err(std::io::Error::last_os_error());
                }
                Ok(())
            });
        }
    }
    let mut screen = Screen::watch(&master);
    let mut child = cmd.spawn().expect("spawn tcpq on the pty");
    drop(cmd); // its copies of the slave end
    drop(slave);
    let pid = child.id();
    let guard = KillOnDrop(pid);
    assert!(
        eventually(Duration::from_secs(60), || screen.shows(ready)),
        "{what}: tcpq did not come up on the pty"
    );
    let ns = Netns::new("sigpty");
    let _lab = BackgroundLab::start(&ns, &["overflow", "--duration", "20"]);
    std::thread::sleep(Duration::from_millis(2500)); // the incident reaches tcpq's loop
    let ours = programs_attached_by(what, pid);
    screen.stop(); // nothing reads the master any more
    let since = Instant::now();
    drop(master);
    assert_leaves(what, pid, since);
    let _ = child.wait();
    drop(guard);
    assert_detached(what, &ours);
}

/// Kills the pid on drop (a failed assertion must not leave tcpq running).
struct KillOnDrop(u32);

impl Drop for KillOnDrop {
    fn drop(&mut self) {
        if !gone(self.0) {
            // SAFETY: kill(2) on the pid of the tcpq this test started.
            unsafe { libc::kill(self.0 as i32, libc::SIGKILL) };
        }
    }
}

/// A pipe with the smallest buffer the kernel allows (one page), so that a few frames fill it:
/// (read end, write end), both close-on-exec (the child gets the write end as its stdout).
fn small_pipe() -> (OwnedFd, OwnedFd) {
    let mut fds = [-1; 2];
    // SAFETY: pipe2 writes two descriptors into the live two-int array.
    let rc = unsafe { libc::pipe2(fds.as_mut_ptr(), libc::O_CLOEXEC) };
    assert_eq!(rc, 0, "pipe2: {}", std::io::Error::last_os_error());
    // SAFETY: both descriptors were just opened by pipe2 and are owned by nothing else.
    let (r, w) = unsafe { (OwnedFd::from_raw_fd(fds[0]), OwnedFd::from_raw_fd(fds[1])) };
    // SAFETY: fcntl on a descriptor just opened; the kernel rounds up to one page.
    unsafe { libc::fcntl(w.as_raw_fd(), libc::F_SETPIPE_SZ, 4096) };
    (r, w)
}

/// The thread of `pid` named `name` sleeps in a pipe write (its reader stopped reading).
fn blocked_in_pipe_write(pid: u32, name: &str) -> bool {
    let Ok(tasks) = std::fs::read_dir(format!("/proc/{pid}/task")) else {
        return false;
    };
    tasks.filter_map(Result::ok).any(|t| {
        let comm = std::fs::read_to_string(t.path().join("comm")).unwrap_or_default();
        let wchan = std::fs::read_to_string(t.path().join("wchan")).unwrap_or_default();
        comm.trim() == name && wchan.contains("pipe_write")
    })
}

/// `tcpq ARGS` writing into a small pipe that is not read, once its output thread sleeps in
/// write(2) on the full pipe; the pipe's read end.
pub fn into_a_stalled_pipe(what: &str, args: &[&str], ready: &str) -> (Running, OwnedFd) {
    let (read_end, write_end) = small_pipe();
    let tcpq = Running::start_to(args, ready, Some(write_end));
    assert!(
        eventually(Duration::from_secs(20), || blocked_in_pipe_write(
            tcpq.pid(),
            "tcpq-output"
        )),
        "{what}: the output thread never blocked on the full pipe:\n{}",
        whereabouts(tcpq.pid())
    );
    (tcpq, read_end)
}

/// `tcpq ARGS` during a SYN storm, its stdout a pipe nobody reads (`tcpq top --json | sleep
/// 1000`): its output thread blocks in write(2), frames or lines are dropped for a while, and
/// SIGTERM still ends it within LIMIT with its programs detached.
pub fn leaves_on_sigterm_while_nobody_reads_its_stdout(what: &str, args: &[&str], ready: &str) {
    let ns = Netns::new("sigpp");
    let _storm = BackgroundLab::start(&ns, &["storm", "--port", "9812", "--duration", "60"]);
    let (mut tcpq, read_end) = into_a_stalled_pipe(what, args, ready);
    std::thread::sleep(Duration::from_millis(1500)); // output is dropped meanwhile
    sends_and_sees_it_leave(what, &mut tcpq, libc::SIGTERM);
    drop(read_end); // never read
}

/// SIGINT is caught by `pid` now (its handler installed: /proc/PID/status SigCgt).
fn catches_sigint(pid: u32) -> bool {
    let Ok(status) = std::fs::read_to_string(format!("/proc/{pid}/status")) else {
        return false;
    };
    status
        .lines()
        .find_map(|l| l.strip_prefix("SigCgt:"))
        .and_then(|mask| u64::from_str_radix(mask.trim(), 16).ok())
        .is_some_and(|mask| mask & (1 << (libc::SIGINT - 1)) != 0)
}

/// `tcpq ARGS` started the way a script's background job is (SIGINT ignored) gets a SIGINT
/// while its programs are still loading, before its `ready` line: it takes its stop handler
/// before it loads anything, so the signal is kept and acted on once the command runs, instead
/// of being lost and tcpq running on.
pub fn a_sigint_during_start_up_is_kept(what: &str, args: &[&str], ready: &str) {
    let mut cmd = tcpq();
    cmd.args(args)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped());
    // SAFETY: only signal(2) between fork and exec, which is async-signal-safe.
    unsafe {
        cmd.pre_exec(|| {
            libc::signal(libc::SIGINT, libc::SIG_IGN);
            Ok(())
        });
    }
    let mut child = cmd.spawn().expect("start tcpq");
    let pid = child.id();
    let announced = Arc::new(AtomicBool::new(false));
    let stderr = child.stderr.take().unwrap();
    let (lines_tx, lines) = mpsc::channel();
    // Killed and reaped on drop, also when an assertion below fails (a tcpq left running with
    // SIGINT ignored would trace on for hours).
    let mut tcpq = Running {
        child,
        stderr: lines,
    };
    {
        let announced = announced.clone();
        let ready = ready.to_string();
        std::thread::spawn(move || {
            use std::io::BufRead as _;
            for line in std::io::BufReader::new(stderr)
                .lines()
                .map_while(Result::ok)
            {
                if line.starts_with(&ready) {
                    announced.store(true, Ordering::SeqCst);
                }
                let _ = lines_tx.send(line);
            }
        });
    }
    let guard = Instant::now();
    while !catches_sigint(pid) {
        assert!(
            guard.elapsed() < Duration::from_secs(60) && tcpq.child.try_wait().unwrap().is_none(),
            "{what}: tcpq never installed its SIGINT handler"
        );
        std::thread::sleep(Duration::from_micros(200));
    }
    // The handler is there before tcpq holds any program (its BTF is read first, tens of ms);
    // installed where it used to be, every program was already attached by then.
    let programs = bpf_programs_of(pid);
    assert!(
        programs.is_empty() && !announced.load(Ordering::SeqCst),
        "{what}: the stop handler comes before the programs load ({} held already), long before the `{ready}` line",
        programs.len()
    );
    // SAFETY: kill(2) on the pid of the tcpq this test started.
    unsafe { libc::kill(pid as i32, libc::SIGINT) };
    // A hang guard, not a timing assertion: loading takes ~0.2 s here, a minute under TCG.
    let left = eventually(Duration::from_secs(120), || gone(pid));
    if !left {
        let _ = tcpq.child.kill();
    }
    let status = tcpq.child.wait().unwrap();
    let said: Vec<String> = tcpq.stderr.try_iter().collect();
    assert!(
        left,
        "{what}: the SIGINT sent during start-up was lost: {said:?}"
    );
    assert!(
        status.success(),
        "{what}: tcpq exited with {status}: {said:?}"
    );
}
