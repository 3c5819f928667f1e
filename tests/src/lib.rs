//! Helpers for tcpq's integration tests: they run the real `tcpq` binary as root against
//! incidents reproduced by `tcpq lab` in network namespaces created here, and compare what tcpq
//! reports with the kernel's own counters of those namespaces.
use std::{
    collections::HashMap,
    io::{BufRead as _, BufReader, Read as _},
    path::PathBuf,
    process::{Child, Command, Stdio},
    sync::atomic::{AtomicU32, Ordering},
    time::Duration,
};

use serde_json::Value;
use tcpq_lab::{
    netns::NetnsGuard,
    sysctl::{self, GlobalSysctl},
};

pub fn is_root() -> bool {
    // SAFETY: geteuid has no preconditions.
    unsafe { libc::geteuid() == 0 }
}

/// Skips (returns true) with a clear message when not root. CI runs as root, so there they run.
pub fn skip_unless_root(test: &str) -> bool {
    if is_root() {
        return false;
    }
    eprintln!(
        "SKIPPED {test}: needs root (loads eBPF programs, creates network namespaces); run `cargo xtask test` as root"
    );
    true
}

/// The tcpq binary: $TCPQ_BIN, else target/debug/tcpq of this workspace (`cargo xtask test`
/// builds it first).
pub fn tcpq_bin() -> PathBuf {
    if let Some(p) = std::env::var_os("TCPQ_BIN") {
        return PathBuf::from(p);
    }
    let p = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../target/debug/tcpq");
    assert!(
        p.exists(),
        "{} missing: build it first (`cargo build -p tcpq-user` or `cargo xtask test`)",
        p.display()
    );
    p
}

pub fn tcpq() -> Command {
    Command::new(tcpq_bin())
}

static SEQ: AtomicU32 = AtomicU32::new(0);

/// A named network namespace owned by the test (tcpq-lab's guard); deleted on drop (also its
/// `-cli` sibling that `tcpq lab synflood` creates), even when the test panics.
pub struct Netns {
    pub name: String,
    guard: NetnsGuard,
}

impl Netns {
    pub fn new(tag: &str) -> Self {
        let name = format!(
            "tqt-{tag}-{}-{}",
            std::process::id() % 100_000,
            SEQ.fetch_add(1, Ordering::SeqCst)
        );
        // Fresh: a leftover of a killed run with the same name is not reused.
        let guard = NetnsGuard::fresh(&name)
            .unwrap_or_else(|e| panic!("create network namespace {name}: {e:#}"));
        Self { name, guard }
    }
    /// The network namespace of process `pid` (a container's) named `name` on the host; the
    /// name is removed on drop.
    pub fn attach(name: &str, pid: u32) -> Self {
        let guard = NetnsGuard::attach(name, pid)
            .unwrap_or_else(|e| panic!("name the network namespace of {pid}: {e:#}"));
        Self {
            name: name.to_string(),
            guard,
        }
    }
    pub fn inode(&self) -> u64 {
        match self.guard.inode() {
            0 => panic!("no netns file for {}", self.name),
            inode => u64::from(inode),
        }
    }
    /// TcpExt/Tcp counters of this namespace, read with the kernel's own /proc files (not tcpq).
    pub fn counters(&self) -> HashMap<String, u64> {
        self.counters_of(&self.name)
    }
    pub fn counters_of(&self, name: &str) -> HashMap<String, u64> {
        tcpq_lab::netns::counters_of(name).unwrap_or_else(|e| panic!("{e:#}"))
    }
}

impl Drop for Netns {
    fn drop(&mut self) {
        // The guard deletes the namespace itself.
        tcpq_lab::netns::delete(&format!("{}-cli", self.name));
    }
}

pub use tcpq_lab::counters::delta;

/// A running `tcpq trace overflow --json …`.
pub struct Tracer {
    child: Child,
    stderr_lines: Vec<String>,
    /// Its stdout, read from the start: a pipe nobody reads fills (64 KiB), and tcpq then drops
    /// lines (`output_stalled`) rather than stop counting — thousands of lines under a slow
    /// kernel (qemu's TCG) did that.
    stdout: Option<std::thread::JoinHandle<String>>,
}

impl Tracer {
    /// Starts tcpq and waits until its hooks are attached (the `tcpq: tracing` line).
    pub fn start(extra: &[&str]) -> Self {
        Self::start_with_env(extra, &[])
    }

    pub fn start_with_env(extra: &[&str], env: &[(&str, &str)]) -> Self {
        let mut args = vec!["trace", "overflow", "--json"];
        args.extend_from_slice(extra);
        Self::start_cmd(&args, env)
    }

    /// Any tracing subcommand (`trace connect --json …`).
    pub fn start_cmd(args: &[&str], env: &[(&str, &str)]) -> Self {
        let mut cmd = tcpq();
        cmd.args(args).envs(env.iter().copied());
        Self::from_command(cmd)
    }

    /// A tracing command started some other way (e.g. under `ip netns exec`, which execs tcpq:
    /// the child is tcpq itself), waited for like any other.
    pub fn from_command(mut cmd: Command) -> Self {
        // A hang guard, not a timing assert: tcpq verifies its programs in ~1 s here, but in
        // most of a minute under qemu's TCG (the kernel matrix), longer while it shares the CPUs
        // with another VM. TCPQ_TEST_START_SECS overrides the wait.
        let wait = std::env::var("TCPQ_TEST_START_SECS")
            .ok()
            .and_then(|v| v.parse().ok())
            .unwrap_or(120);
        cmd.stdout(Stdio::piped());
        let started = tcpq_lab::tcpq::start(
            &mut cmd,
            |line| line.starts_with("tcpq: tracing"),
            Duration::from_secs(wait),
        )
        .unwrap_or_else(|e| panic!("tcpq did not start: {e:#}"));
        let mut child = started.child;
        let mut stdout = child.stdout.take().expect("tcpq's stdout is piped");
        let stdout = std::thread::spawn(move || {
            let mut out = String::new();
            let _ = stdout.read_to_string(&mut out);
            out
        });
        Self {
            child,
            stderr_lines: started.banner,
            stdout: Some(stdout),
        }
    }

    /// SIGINT, then every NDJSON line it printed (events, aggregates, summaries).
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    pub fn stop(mut self) -> Vec<Value> {
        // SAFETY: sending a signal to our own child.
        unsafe { libc::kill(self.child.id() as i32, libc::SIGINT) };
        let status = self.child.wait().unwrap();
        let out = self
            .stdout
            .take()
            .unwrap()
            .join()
            .expect("the stdout reader of tcpq");
        assert!(
            status.success(),
            "tcpq exited with {status}; stderr: {:?}",
            self.stderr_lines
        );
        out.lines()
            .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("not JSON ({e}): {l}")))
            .collect()
    }
}

impl Drop for Tracer {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Runs `tcpq lab … --json --netns NS` to completion; returns (facts, done) lines.
pub fn run_lab(ns: &Netns, args: &[&str]) -> (Value, Value) {
    let out = tcpq()
        .arg("lab")
        .args(args)
        .args(["--json", "--netns", &ns.name])
        .output()
        .expect("spawn tcpq lab");
    assert!(
        out.status.success(),
        "tcpq lab {args:?} failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let lines: Vec<Value> = String::from_utf8_lossy(&out.stdout)
        .lines()
        .map(|l| serde_json::from_str(l).expect("lab JSON"))
        .collect();
    assert_eq!(lines.len(), 2, "lab prints facts and done: {lines:?}");
    (lines[0].clone(), lines[1].clone())
}

/// Sums `count` per `kind` over event and aggregate lines of one namespace.
pub fn counts_by_kind(lines: &[Value], netns: u64) -> HashMap<String, u64> {
    let mut m = HashMap::new();
    for v in lines {
        if v["event"] == "summary" || v["netns"].as_u64() != Some(netns) {
            continue;
        }
        *m.entry(v["kind"].as_str().unwrap().to_string())
            .or_insert(0) += v["count"].as_u64().unwrap();
    }
    m
}

/// The final (whole-run) summary line.
pub fn final_summary(lines: &[Value]) -> &Value {
    lines
        .iter()
        .rev()
        .find(|v| v["event"] == "summary")
        .expect("a summary line")
}

/// The summary block of the listener in namespace `netns`.
pub fn listener_summary(summary: &Value, netns: u64) -> &Value {
    summary["listeners"]
        .as_array()
        .unwrap()
        .iter()
        .find(|l| l["netns"].as_u64() == Some(netns))
        .unwrap_or_else(|| panic!("no listener of netns {netns} in {summary}"))
}

pub fn causes(listener: &Value) -> Vec<String> {
    listener["causes"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| c["cause"].as_str().unwrap().to_string())
        .collect()
}

/// A cause's `fix` lines (JSON of diagnose, top and trace summaries).
pub fn fix_lines(cause: &Value) -> Vec<&str> {
    cause["fix"]
        .as_array()
        .unwrap_or_else(|| panic!("no fix in {cause}"))
        .iter()
        .map(|f| f.as_str().unwrap())
        .collect()
}

/// A silent upstream on 127.0.0.1:`port` in `ns`: a server that accepts and never answers, and a
/// client that sent a request and waits without a timeout. Returns (server, client, client pid).
pub fn silent_upstream(ns: &Netns, port: u16) -> (Child, Child, String) {
    let mut server = python_in(
        ns,
        &format!(
            "import socket,time\nl=socket.socket(); l.bind(('127.0.0.1',{port})); l.listen(16)\nprint('up',flush=True)\nc,_=l.accept()\ntime.sleep(30)"
        ),
    );
    assert_eq!(first_line(&mut server), "up");
    let mut client = python_in(
        ns,
        &format!(
            "import socket,os\ns=socket.socket(); s.connect(('127.0.0.1',{port})); s.sendall(b'GET / HTTP/1.0\\r\\n\\r\\n')\nprint(os.getpid(),flush=True)\ns.recv(10)"
        ),
    );
    let pid = first_line(&mut client);
    (server, client, pid)
}

/// A `tcpq lab` running in the background.
pub struct BackgroundLab {
    child: Child,
    stdout: BufReader<std::process::ChildStdout>,
    pub facts: Value,
}

impl BackgroundLab {
    /// Starts the lab and returns once its server listens (the facts line).
    pub fn start(ns: &Netns, args: &[&str]) -> Self {
        let mut child = tcpq()
            .arg("lab")
            .args(args)
            .args(["--json", "--netns", &ns.name])
            .stdout(Stdio::piped())
            .spawn()
            .expect("spawn tcpq lab");
        let mut stdout = BufReader::new(child.stdout.take().unwrap());
        let mut line = String::new();
        stdout.read_line(&mut line).expect("lab facts");
        let facts =
            serde_json::from_str(&line).unwrap_or_else(|e| panic!("lab facts ({e}): {line}"));
        Self {
            child,
            stdout,
            facts,
        }
    }

    /// Ends the lab now (SIGINT: it stops its load and reports); returns its `lab_done` line.
    pub fn interrupt(self) -> Value {
        // SAFETY: kill(2) on our own child's pid; no memory is involved.
        unsafe { libc::kill(self.child.id() as i32, libc::SIGINT) };
        self.finish()
    }

    /// Waits for the lab to finish; returns its `lab_done` line.
    pub fn finish(mut self) -> Value {
        let mut line = String::new();
        self.stdout.read_line(&mut line).expect("lab done");
        let status = self.child.wait().unwrap();
        assert!(status.success(), "lab failed: {status}");
        serde_json::from_str(&line).unwrap_or_else(|e| panic!("lab done ({e}): {line}"))
    }
}

impl Drop for BackgroundLab {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Tracer {
    /// The `tcpq: tracing …` banner and anything printed before it on stderr.
    pub fn banner(&self) -> &[String] {
        &self.stderr_lines
    }
}

/// Runs a Python snippet inside a network namespace (the tests' stand-in application).
pub fn python_in(ns: &Netns, code: &str) -> std::process::Child {
    Command::new("ip")
        .args(["netns", "exec", &ns.name, "python3", "-c", code])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("python3")
}

/// The next line of a child's stdout, read byte by byte so nothing after it is buffered away
/// (the child's later lines stay readable).
pub fn first_line(child: &mut std::process::Child) -> String {
    use std::io::Read as _;
    let out = child.stdout.as_mut().expect("child stdout is piped");
    let mut line = Vec::new();
    let mut b = [0u8; 1];
    while out.read(&mut b).unwrap_or(0) == 1 && b[0] != b'\n' {
        line.push(b[0]);
    }
    String::from_utf8_lossy(&line).trim().to_string()
}

/// Applies an nft script inside a namespace.
pub fn nft_in(ns: &Netns, script: &str) {
    if let Err(e) = tcpq_lab::netns::nft_in(&ns.name, script) {
        panic!("nft script failed ({e:#}): {script}");
    }
}

/// tcpq's count equals the kernel's over the same interval — except that records whose
/// outcome tcpq could not observe, which its summary reports (`unresolved`, `missed_runs`),
/// may be missing from it: then it may fall short by at most that many, and never exceed.
pub fn assert_count_matches(what: &str, tcpq: u64, kernel: u64, summary: &Value) {
    let unseen =
        summary["unresolved"].as_u64().unwrap_or(0) + summary["missed_runs"].as_u64().unwrap_or(0);
    // Shown with --nocapture (the VM runs): the counts behind a pass, not only a failure's.
    eprintln!("count: {what}: tcpq {tcpq}, kernel {kernel}, unseen {unseen}");
    if unseen == 0 {
        assert_eq!(tcpq, kernel, "{what}: tcpq vs the kernel's counter");
    } else {
        assert!(
            tcpq <= kernel && kernel - tcpq <= unseen,
            "{what}: tcpq {tcpq}, kernel {kernel}, records tcpq reports it could not follow {unseen}"
        );
    }
}

/// The global nf_conntrack_max, as the kernel prints it (trimmed). nf_conntrack is loaded
/// first where it is a module, so the value read is the one a lab will find and restore.
pub fn ct_max() -> String {
    sysctl::load_conntrack();
    std::fs::read_to_string(sysctl::CONNTRACK_MAX)
        .unwrap_or_default()
        .trim()
        .to_string()
}

/// Restores the global nf_conntrack_max when dropped, also when the test panics while a lab
/// that lowered it still runs (the lab is then killed and cannot restore it itself).
pub struct CtMaxRestore {
    _restores_on_drop: Option<GlobalSysctl>,
}

impl CtMaxRestore {
    pub fn save() -> Self {
        sysctl::load_conntrack();
        Self {
            _restores_on_drop: GlobalSysctl::save(sysctl::CONNTRACK_MAX).ok(),
        }
    }
}

/// `tcpq top --json -d DELAY EXTRA…` in the background: frames arrive on a channel; stopped
/// with SIGINT on drop.
pub struct TopJson {
    pub child: Child,
    pub frames: std::sync::mpsc::Receiver<Value>,
}

impl TopJson {
    pub fn start(delay: &str) -> Self {
        Self::start_with(delay, &[])
    }

    pub fn start_with(delay: &str, extra: &[&str]) -> Self {
        let mut child = tcpq()
            .args(["top", "--json", "-d", delay])
            .args(extra)
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("spawn tcpq top");
        let out = BufReader::new(child.stdout.take().unwrap());
        let (tx, frames) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            for line in out.lines().map_while(Result::ok) {
                let v: Value =
                    serde_json::from_str(&line).unwrap_or_else(|e| panic!("frame ({e}): {line}"));
                if tx.send(v).is_err() {
                    break;
                }
            }
        });
        Self { child, frames }
    }

    pub fn next(&self) -> Value {
        self.frames
            .recv_timeout(Duration::from_secs(15))
            .expect("a frame from tcpq top")
    }
}

impl Drop for TopJson {
    fn drop(&mut self) {
        // SAFETY: kill(2) on our own child's pid.
        unsafe { libc::kill(self.child.id() as i32, libc::SIGINT) };
        let _ = self.child.wait();
    }
}

/// tcpq's program names (tcpq-common's `names::PROG_*`); the kernel keeps at most 15 bytes.
const TCPQ_PROGRAMS: &[&str] = &[
    "listen_ingress",
    "synack_retransmit",
    "send_reset",
    "sys_enter_listen",
    "sys_exit_accept",
    "sys_exit_accept4",
    "fentry_probe",
    "sock_state",
    "floor_probe",
    "outcome_xmit",
    "outcome_child",
    "outcome_consume",
    "sys_enter_connect",
    "sys_exit_connect",
    "connect_state",
    "connect_retrans",
    "skb_kfree",
    "drop_owner",
    "accept_enqueue",
    "accept_enter4",
    "accept_enter",
    "accept_exit4",
    "accept_exit",
    // The fentry/kprobe alternatives of the syscall hooks (kernels that allow them).
    "accept_fentry",
    "accept_fexit",
    "connect_fentry",
    "connect_fexit",
    "listen_fentry",
    "listen_kprobe",
    "accept_count_fexit",
];

/// One attachment of a tcpq program, as the kernel lists it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AttachedProgram {
    pub name: String,
    pub prog_id: u32,
    pub link_id: u32,
}

/// tcpq's programs attached right now (by any process), from the kernel's own lists: every BPF
/// link (cgroup_skb, raw tracepoint and perf-event tracepoint attachments alike) joined with its
/// program, kept when the program's name is one of tcpq's.
pub fn attached_tcpq_programs() -> Vec<AttachedProgram> {
    let names: HashMap<u32, String> = aya::programs::loaded_programs()
        .filter_map(Result::ok)
        .filter_map(|p| Some((p.id(), p.name_as_str()?.to_string())))
        .filter(|(_, n)| TCPQ_PROGRAMS.iter().any(|t| &t[..t.len().min(15)] == n))
        .collect();
    aya::programs::loaded_links()
        .filter_map(Result::ok)
        .filter_map(|l| {
            Some(AttachedProgram {
                name: names.get(&l.program_id())?.clone(),
                prog_id: l.program_id(),
                link_id: l.id(),
            })
        })
        .collect()
}

/// Ids of the BPF programs a process holds (the `prog_id` of its program and link descriptors
/// in /proc/PID/fdinfo): with `attached_tcpq_programs`, what one tcpq has attached, apart from
/// any other tcpq running at the same time.
pub fn bpf_programs_of(pid: u32) -> std::collections::HashSet<u32> {
    let Ok(dir) = std::fs::read_dir(format!("/proc/{pid}/fdinfo")) else {
        return Default::default();
    };
    dir.filter_map(Result::ok)
        .filter_map(|e| std::fs::read_to_string(e.path()).ok())
        .filter_map(|info| {
            info.lines()
                .find_map(|l| l.strip_prefix("prog_id:"))
                .and_then(|v| v.trim().parse().ok())
        })
        .collect()
}

/// tcpq's programs the process `pid` has attached now, from the kernel's link list.
pub fn attached_by(pid: u32) -> Vec<String> {
    let mine = bpf_programs_of(pid);
    let mut names: Vec<String> = attached_tcpq_programs()
        .into_iter()
        .filter(|a| mine.contains(&a.prog_id))
        .map(|a| a.name)
        .collect();
    names.sort();
    names
}

/// Runs `tmux ARGS`; its stdout.
pub fn tmux(args: &[&str]) -> String {
    let out = Command::new("tmux")
        .args(args)
        .output()
        .expect("tmux (cargo xtask setup installs it)");
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// A tmux session owned by the test: killed on drop.
pub struct TmuxSession(pub String);

impl Drop for TmuxSession {
    fn drop(&mut self) {
        let _ = Command::new("tmux")
            .args(["kill-session", "-t", &self.0])
            .stderr(Stdio::null())
            .status();
    }
}

/// VmRSS of a process in KiB.
pub fn rss_kib(pid: u32) -> Option<u64> {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .ok()?
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))?
        .split_whitespace()
        .next()?
        .parse()
        .ok()
}

/// Open descriptors of a process.
pub fn fd_count(pid: u32) -> usize {
    std::fs::read_dir(format!("/proc/{pid}/fd"))
        .map(|d| d.count())
        .unwrap_or(0)
}

/// `GET /metrics` from a `tcpq export` at `addr`: the whole answer, if it was a 200.
pub fn scrape(addr: &str) -> Option<String> {
    use std::io::Write as _;
    let mut s = std::net::TcpStream::connect(addr).ok()?;
    s.set_read_timeout(Some(Duration::from_secs(5))).ok()?;
    write!(
        s,
        "GET /metrics HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n"
    )
    .ok()?;
    let mut body = String::new();
    s.read_to_string(&mut body).ok()?;
    body.contains("200 OK").then_some(body)
}

/// 127.0.0.1:PORT with a port nothing listens on right now.
pub fn free_loopback_addr() -> String {
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("a free port")
        .port();
    format!("127.0.0.1:{port}")
}

/// The series of a /metrics page: full name with labels → value.
pub fn metric_series(text: &str) -> HashMap<String, f64> {
    text.lines()
        .filter(|l| l.starts_with("tcpq_"))
        .filter_map(|l| {
            let (k, v) = l.rsplit_once(' ')?;
            Some((k.to_string(), v.parse().ok()?))
        })
        .collect()
}

/// A tool the test needs (promtool, prometheus, setpriv…): its path, or None after printing why
/// the test is skipped (see `present_or_skip`).
pub fn tool_or_skip(test: &str, tool: &str, package: &str) -> Option<PathBuf> {
    let found = std::env::var_os("PATH").and_then(|paths| {
        std::env::split_paths(&paths)
            .map(|d| d.join(tool))
            .find(|p| p.is_file())
    });
    present_or_skip(
        test,
        found,
        &format!("{tool} is not on PATH (Debian package {package})"),
    )
}

/// Something the test needs that `cargo xtask test` provides (a tool setup installs, the .deb
/// dist builds, setup's venv): `found`, or None after printing `SKIPPED test: missing; …`. Under
/// `cargo xtask test` (TCPQ_TOOLS_REQUIRED=1) a missing one fails the test instead.
pub fn present_or_skip(test: &str, found: Option<PathBuf>, missing: &str) -> Option<PathBuf> {
    if found.is_none() {
        assert!(
            std::env::var_os("TCPQ_TOOLS_REQUIRED").is_none(),
            "{test}: {missing}, although `cargo xtask test` provides it"
        );
        eprintln!(
            "SKIPPED {test}: {missing}: `cargo xtask setup` installs the tools (as root), `cargo xtask dist` builds the package"
        );
    }
    found
}

/// The repository's deploy/ directory.
pub fn deploy_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../deploy")
}

/// The newest file of target/dist (what `cargo xtask dist` built) whose name ends with `suffix`,
/// or None after saying why the test is skipped (see `present_or_skip`).
pub fn newest_in_dist(test: &str, suffix: &str) -> Option<PathBuf> {
    let dist = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../target/dist");
    let found = std::fs::read_dir(&dist).ok().and_then(|d| {
        d.filter_map(Result::ok)
            .map(|e| e.path())
            .filter(|p| p.to_string_lossy().ends_with(suffix))
            .max_by_key(|p| std::fs::metadata(p).and_then(|m| m.modified()).ok())
    });
    present_or_skip(test, found, &format!("no *{suffix} in {}", dist.display()))
}

/// deploy/kubernetes/tcpq.yaml's objects.
pub fn kubernetes_manifests() -> Vec<yaml_rust2::Yaml> {
    let text = std::fs::read_to_string(deploy_dir().join("kubernetes/tcpq.yaml")).unwrap();
    yaml_rust2::YamlLoader::load_from_str(&text).expect("deploy/kubernetes/tcpq.yaml parses")
}

/// The object of this kind among `docs`.
pub fn kubernetes_object<'a>(docs: &'a [yaml_rust2::Yaml], kind: &str) -> &'a yaml_rust2::Yaml {
    docs.iter()
        .find(|d| d["kind"].as_str() == Some(kind))
        .unwrap_or_else(|| panic!("no {kind} in deploy/kubernetes/tcpq.yaml"))
}

/// The strings of a YAML list (nothing when it is not one).
pub fn yaml_strings(y: &yaml_rust2::Yaml) -> Vec<String> {
    y.as_vec()
        .map(|v| {
            v.iter()
                .filter_map(|s| s.as_str().map(String::from))
                .collect()
        })
        .unwrap_or_default()
}

/// `tcpq_listen_refused_total` of one listener of one namespace on a /metrics page (summed over
/// its process labels).
pub fn listener_refused(series: &HashMap<String, f64>, netns: u64, listener: &str) -> f64 {
    series
        .iter()
        .filter(|(k, _)| {
            k.starts_with("tcpq_listen_refused_total{")
                && k.contains(&format!("netns=\"{netns}\""))
                && k.contains(&format!("listener=\"{listener}\""))
        })
        .map(|(_, v)| v)
        .sum()
}

/// What a PromQL expression references: each selector's metric name with the label names its
/// matchers use, and the label names of its `by`/`without`/`on`/`ignoring`/`group_*` clauses.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct PromqlRefs {
    pub selectors: Vec<(String, Vec<String>)>,
    pub grouping: Vec<String>,
}

/// Keywords whose `(…)` holds label names.
const PROMQL_GROUPING: &[&str] = &[
    "by",
    "without",
    "on",
    "ignoring",
    "group_left",
    "group_right",
];
/// Other keywords (never metric names).
const PROMQL_KEYWORDS: &[&str] = &[
    "offset", "bool", "and", "or", "unless", "atan2", "inf", "nan",
];

/// A small PromQL scanner (enough for tcpq's rules and dashboard, not a parser: syntax is
/// promtool's job): skips strings, numbers/durations and `[...]` ranges; an identifier followed by
/// `(` is a function or aggregation; any other non-keyword identifier is a metric name.
pub fn promql_refs(expr: &str) -> PromqlRefs {
    let c: Vec<char> = expr.chars().collect();
    let mut refs = PromqlRefs::default();
    let ident_start = |ch: char| ch.is_ascii_alphabetic() || ch == '_' || ch == ':';
    let ident_char = |ch: char| ch.is_ascii_alphanumeric() || ch == '_' || ch == ':';
    let skip_ws = |mut i: usize| {
        while i < c.len() && c[i].is_whitespace() {
            i += 1;
        }
        i
    };
    let skip_string = |i: usize| {
        let q = c[i];
        let mut j = i + 1;
        while j < c.len() && c[j] != q {
            if c[j] == '\\' {
                j += 1;
            }
            j += 1;
        }
        j + 1
    };
    // Label names inside `(...)` or `{...}` starting at `open`: (names, index after the close).
    let labels_in = |open: usize, close: char| {
        let mut names = Vec::new();
        let mut j = open + 1;
        let mut expect_name = true;
        while j < c.len() && c[j] != close {
            if c[j] == '"' || c[j] == '\'' || c[j] == '`' {
                j = skip_string(j);
                continue;
            }
            if ident_start(c[j]) {
                let s = j;
                while j < c.len() && ident_char(c[j]) {
                    j += 1;
                }
                if expect_name {
                    names.push(c[s..j].iter().collect::<String>());
                }
                expect_name = false;
                continue;
            }
            if c[j] == ',' {
                expect_name = true;
            }
            j += 1;
        }
        (names, j + 1)
    };
    let mut i = 0;
    while i < c.len() {
        let ch = c[i];
        if ch == '"' || ch == '\'' || ch == '`' {
            i = skip_string(i);
        } else if ch == '[' {
            while i < c.len() && c[i] != ']' {
                i += 1;
            }
            i += 1;
        } else if ch.is_ascii_digit()
            || (ch == '.' && c.get(i + 1).is_some_and(|d| d.is_ascii_digit()))
        {
            while i < c.len() && (c[i].is_ascii_alphanumeric() || c[i] == '.') {
                i += 1;
            }
        } else if ident_start(ch) {
            let s = i;
            while i < c.len() && ident_char(c[i]) {
                i += 1;
            }
            let word: String = c[s..i].iter().collect();
            let next = skip_ws(i);
            let grouping = PROMQL_GROUPING.contains(&word.as_str());
            if grouping && c.get(next) == Some(&'(') {
                let (names, after) = labels_in(next, ')');
                refs.grouping.extend(names);
                i = after;
            } else if c.get(next) == Some(&'(')
                || grouping
                || PROMQL_KEYWORDS.contains(&word.to_ascii_lowercase().as_str())
                || ["by", "without"].iter().any(|k| {
                    c[next..].starts_with(&k.chars().collect::<Vec<_>>())
                        && !c.get(next + k.len()).is_some_and(|&ch| ident_char(ch))
                })
            {
                // a function or aggregation (`sum by (…) (…)`), or a keyword
            } else if c.get(next) == Some(&'{') {
                let (names, after) = labels_in(next, '}');
                refs.selectors.push((word, names));
                i = after;
            } else {
                refs.selectors.push((word, Vec::new()));
            }
        } else {
            i += 1;
        }
    }
    refs
}

/// Grafana's variables replaced so that the expression is plain PromQL: `$__rate_interval` and
/// the other interval variables by `5m`, any other `$var` / `${var}` (used inside regex matchers)
/// by `.*`.
pub fn grafana_to_promql(expr: &str) -> String {
    let mut out = String::new();
    let c: Vec<char> = expr.chars().collect();
    let mut i = 0;
    while i < c.len() {
        if c[i] != '$' {
            out.push(c[i]);
            i += 1;
            continue;
        }
        let braced = c.get(i + 1) == Some(&'{');
        let s = if braced { i + 2 } else { i + 1 };
        let mut j = s;
        while j < c.len() && (c[j].is_ascii_alphanumeric() || c[j] == '_') {
            j += 1;
        }
        let name: String = c[s..j].iter().collect();
        if braced {
            while j < c.len() && c[j] != '}' {
                j += 1;
            }
            j += 1;
        }
        out.push_str(if name.starts_with("__") { "5m" } else { ".*" });
        i = j;
    }
    out
}

/// A cgroup v2 child of the root for the test (a stand-in for a container's cgroup), possibly
/// nested: every directory it created is removed on drop, deepest first.
pub struct TestCgroup {
    pub path: std::path::PathBuf,
    pub name: String,
    created: Vec<std::path::PathBuf>,
    /// The pod UID and container id of a `containerd_pod` cgroup.
    pod: Option<(String, String)>,
}

/// Where cgroup2 is mounted (/sys/fs/cgroup, or /sys/fs/cgroup/unified on hybrid hosts).
pub fn cgroup2_root() -> std::path::PathBuf {
    let mounts = std::fs::read_to_string("/proc/self/mounts").unwrap();
    mounts
        .lines()
        .find_map(|l| {
            let f: Vec<&str> = l.split(' ').collect();
            (f.len() > 2 && f[2] == "cgroup2").then(|| std::path::PathBuf::from(f[1]))
        })
        .expect("cgroup2 mounted")
}

impl TestCgroup {
    pub fn new(tag: &str) -> Self {
        let name = format!("tcpq-test-{tag}-{}", std::process::id());
        let path = cgroup2_root().join(&name);
        std::fs::create_dir(&path).expect("create a cgroup2 child");
        Self {
            created: vec![path.clone()],
            path,
            name,
            pod: None,
        }
    }
    /// `parts` nested under the root (the leaf is the last).
    pub fn nested(parts: &[String]) -> Self {
        let mut path = cgroup2_root();
        let mut created = Vec::new();
        for p in parts {
            path = path.join(p);
            std::fs::create_dir(&path).expect("create a cgroup2 child");
            created.push(path.clone());
        }
        Self {
            path,
            name: parts.join("/"),
            created,
            pod: None,
        }
    }
    /// A containerd container of a Kubernetes pod as the kubelet's systemd driver names it
    /// (`…/kubepods-besteffort-pod<uid>.slice/cri-containerd-<id>.scope`), under a slice of the
    /// test's own: every test gets its own pod UID and container id.
    pub fn containerd_pod(tag: &str) -> Self {
        let me = std::process::id();
        let n = SEQ.fetch_add(1, Ordering::SeqCst);
        let uid = format!("{me:08x}-{:04x}-4000-8000-{me:012x}", n & 0xffff);
        let id = format!("{me:08x}{n:08x}{}", &"c0ffee".repeat(8)[..48]);
        let mut cg = Self::nested(&[
            format!("tcpq-test-kubepods-{tag}-{me}-{n}.slice"),
            format!("kubepods-besteffort-pod{}.slice", uid.replace('-', "_")),
            format!("cri-containerd-{id}.scope"),
        ]);
        cg.pod = Some((uid, id));
        cg
    }
    /// What tcpq names a `containerd_pod` process's pod with no runtime state to read: `pod <uid>`.
    pub fn pod(&self) -> String {
        let (uid, _) = self.pod.as_ref().expect("a containerd_pod cgroup");
        format!("pod {uid}")
    }
    /// … and its container: `containerd <short id>`.
    pub fn container(&self) -> String {
        let (_, id) = self.pod.as_ref().expect("a containerd_pod cgroup");
        format!("containerd {}", &id[..12])
    }
    /// Asserts that a JSON line names this pod and container.
    pub fn assert_named_in(&self, v: &Value) {
        assert_eq!(v["pod"].as_str(), Some(self.pod().as_str()), "{v}");
        assert_eq!(
            v["container"].as_str(),
            Some(self.container().as_str()),
            "{v}"
        );
    }
    pub fn adopt(&self, pid: u64) {
        std::fs::write(self.path.join("cgroup.procs"), pid.to_string())
            .expect("move the lab into the cgroup");
    }
}

impl Drop for TestCgroup {
    fn drop(&mut self) {
        // Move anything left back to the root, then remove what was created, deepest first.
        let root = cgroup2_root().join("cgroup.procs");
        if let Ok(procs) = std::fs::read_to_string(self.path.join("cgroup.procs")) {
            for p in procs.lines() {
                let _ = std::fs::write(&root, p);
            }
        }
        for dir in self.created.iter().rev() {
            for _ in 0..20 {
                if std::fs::remove_dir(dir).is_ok() {
                    break;
                }
                std::thread::sleep(Duration::from_millis(100));
            }
        }
    }
}

/// `Key=value` lines of a systemd unit or an environment file (last one wins).
pub fn unit_setting(text: &str, key: &str) -> Option<String> {
    text.lines()
        .rev()
        .find_map(|l| l.trim().strip_prefix(&format!("{key}=")))
        .map(|v| v.trim().trim_matches('"').to_string())
}

/// `Cap…`/`NoNewPrivs`/`Seccomp` fields of one /proc status file (the capability sets as masks).
pub fn status_field(status: &str, name: &str) -> u64 {
    let v = status
        .lines()
        .find_map(|l| l.strip_prefix(name))
        .unwrap_or_else(|| panic!("no {name} in {status}"))
        .trim();
    if name.starts_with("Cap") {
        u64::from_str_radix(v, 16).expect("hex capability mask")
    } else {
        v.parse().expect("a number")
    }
}
