//! The bpftrace equivalent of tcpq's hooks (`BPFTRACE_SCRIPT`): started, stopped, and its rps
//! ratio under the healthy load.
use std::{
    io::{BufRead as _, BufReader, Read as _},
    process::{Child, Command, Stdio},
    thread,
    time::Duration,
};

use super::{load::wrk_rps, median};
use crate::ensure_package;

/// bpftrace has no BPF_ENABLE_STATS fd of its own: its programs are counted with this on.
pub(super) const BPF_STATS_SYSCTL: &str = "/proc/sys/kernel/bpf_stats_enabled";

/// The same signals as tcpq's hooks, gathered the plain way: bpftrace one-liners on the
/// equivalent tracepoints (connect/accept syscalls, state changes with handshake and queue
/// latency, drops by reason, SYN-ACK retransmits), aggregated in bpftrace maps.
const BPFTRACE_SCRIPT: &str = r#"
tracepoint:syscalls:sys_enter_connect { @cs[tid] = nsecs; }
tracepoint:syscalls:sys_exit_connect /@cs[tid]/ { @connect_us[comm, args->ret] = hist((nsecs - @cs[tid]) / 1000); delete(@cs[tid]); }
tracepoint:syscalls:sys_exit_accept4 { @accepts[comm, args->ret < 0 ? args->ret : 0] = count(); }
tracepoint:sock:inet_sock_set_state /args->protocol == 6/ {
  if (args->newstate == 2) { @syn[args->skaddr] = nsecs; }
  if (args->oldstate == 2) { @handshake_us[args->dport] = hist((nsecs - @syn[args->skaddr]) / 1000); delete(@syn[args->skaddr]); }
  if (args->oldstate == 3 && args->newstate == 1) { @enq[args->skaddr] = nsecs; }
  if (args->newstate == 7) { delete(@enq[args->skaddr]); }
}
tracepoint:skb:kfree_skb { @drops[args->reason] = count(); }
tracepoint:tcp:tcp_retransmit_synack { @synack_retrans = count(); }
"#;

/// The bpftrace equivalent, attached until `stop`.
pub(super) struct Bpftrace {
    pub(super) child: Child,
    drain: thread::JoinHandle<()>,
}

impl Bpftrace {
    pub(super) fn start() -> Result<Self, String> {
        ensure_package("bpftrace", "bpftrace", "the comparison")?;
        let mut child = Command::new("bpftrace")
            .args(["-e", BPFTRACE_SCRIPT])
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .map_err(|e| format!("start bpftrace: {e}"))?;
        let mut out = BufReader::new(child.stdout.take().ok_or("bpftrace stdout")?);
        let mut line = String::new();
        let _ = out.read_line(&mut line);
        if !line.contains("Attaching") {
            let _ = child.kill();
            let _ = child.wait();
            return Err(format!("bpftrace did not attach: {}", line.trim()));
        }
        // Keep reading so bpftrace never blocks on a full pipe (it prints its maps at exit).
        let drain = thread::spawn(move || {
            let mut sink = String::new();
            let _ = out.read_to_string(&mut sink);
        });
        Ok(Self { child, drain })
    }

    pub(super) fn stop(mut self) {
        let _ = Command::new("kill")
            .args(["-INT", &self.child.id().to_string()])
            .status();
        let _ = self.child.wait();
        let _ = self.drain.join();
    }
}

/// rps ratio with the bpftrace equivalent attached, per pair; Err (with why) when bpftrace
/// cannot run here.
pub(super) fn bpftrace_ratio(secs: u64, pairs: usize) -> Result<f64, String> {
    let mut ratios = Vec::new();
    for i in 0..pairs {
        let base_first = if i % 2 == 0 {
            Some(wrk_rps(secs).map_err(|e| e.to_string())?)
        } else {
            None
        };
        let bt = Bpftrace::start()?;
        thread::sleep(Duration::from_millis(500));
        let with = wrk_rps(secs);
        bt.stop();
        let base = match base_first {
            Some(b) => b,
            None => wrk_rps(secs).map_err(|e| e.to_string())?,
        };
        ratios.push(with.map_err(|e| e.to_string())? / base);
    }
    Ok(median(ratios))
}
