//! The cost while tier 2 traces — nginx overflowing, and every family on the healthy load —
//! tcpq against the bpftrace equivalent, and the report rows that compare them.
use anyhow::Result;
use tcpq_lab::sysctl::GlobalSysctl;

use super::{
    NGINX_PORT, OVERFLOW_PORT,
    bpftrace::{BPF_STATS_SYSCTL, Bpftrace},
    cost::{Accounted, account},
    load::wrk_rps_at,
    median,
    running::{frames, start_tcpq},
};

/// A load under which tier 2 traces, and how tcpq is run for it.
#[derive(Clone, Copy)]
pub(super) struct Scenario {
    /// What the rows call it.
    name: &'static str,
    port: u16,
    tcpq_args: &'static [&'static str],
    /// The target column of its ratio row.
    target: &'static str,
}

/// The incident the issue names: nginx with a small backlog overflowing under wrk; tcpq top
/// in its default mode, which arms the listen (and accept) family on it.
pub(super) const OVERFLOW: Scenario = Scenario {
    name: "nginx overflowing (backlog=8; `top` arms the listen family)",
    port: OVERFLOW_PORT,
    tcpq_args: &["top", "--json", "-d", "1"],
    target: "≤ 1×",
};

/// The worst case: every family tracing on the healthy load (`--hooks all`).
pub(super) const EVERYTHING: Scenario = Scenario {
    name: "healthy load, every family tracing (`top --hooks all`)",
    port: NGINX_PORT,
    tcpq_args: &["top", "--json", "-d", "1", "--hooks", "all"],
    // Opt-in: every program on every connection, kinds confirmed; the target is the
    // incident above.
    target: "worst case, informational",
};

/// tcpq against the bpftrace equivalent under `scenario`, alternating, `pairs` times; medians
/// of each tool's accounted cost per request (programs + process, stats on), and the frames
/// in which tcpq was tracing (the overflow must have armed it).
pub(super) struct Armed {
    scenario: Scenario,
    tcpq: Accounted,
    tracing_frames: usize,
    frames: usize,
    bpftrace: Result<Accounted, String>,
}

pub(super) fn armed_comparison(scenario: Scenario, secs: u64, pairs: usize) -> Result<Armed> {
    let med = |v: &[Accounted]| Accounted {
        programs_ns: median(v.iter().map(|a| a.programs_ns).collect()),
        runs: median(v.iter().map(|a| a.runs).collect()),
        process_ns: median(v.iter().map(|a| a.process_ns).collect()),
    };
    let (mut tcpq, mut bt, mut bt_err) = (Vec::new(), Vec::new(), None);
    let (mut tracing_frames, mut frames_seen) = (0, 0);
    for _ in 0..pairs {
        let running = start_tcpq(scenario.tcpq_args, &[("TCPQ_BPF_STATS", "1")], true)?;
        // One second of the load first: the incident arms tier 2 within it, and the
        // measured run is the armed steady state.
        wrk_rps_at(scenario.port, 1)?;
        let measured = account(running.child.id(), scenario.port, secs).map(|(_, a)| a);
        let out = running.stop(true)?;
        let fs = frames(&out.stdout);
        frames_seen += fs.len();
        tracing_frames += fs
            .iter()
            .filter(|f| {
                f["families"]
                    .as_array()
                    .is_some_and(|v| v.iter().any(|x| x["state"] == "tracing"))
            })
            .count();
        tcpq.push(measured.map_err(anyhow::Error::msg)?);
        if bt_err.is_some() {
            continue;
        }
        let stats = GlobalSysctl::set(BPF_STATS_SYSCTL, "1").map_err(|e| format!("{e:#}"));
        let measured = stats.and_then(|_stats| {
            let tool = Bpftrace::start()?;
            let _ = wrk_rps_at(scenario.port, 1);
            let measured = account(tool.child.id(), scenario.port, secs).map(|(_, a)| a);
            tool.stop();
            measured
        });
        match measured {
            Ok(a) => bt.push(a),
            Err(why) => bt_err = Some(why),
        }
    }
    Ok(Armed {
        scenario,
        tcpq: med(&tcpq),
        tracing_frames,
        frames: frames_seen,
        bpftrace: match bt_err {
            Some(why) => Err(why),
            None => Ok(med(&bt)),
        },
    })
}

/// The armed rows of one scenario: both tools' accounted cost per request, as measured and net
/// of the stats' floor, and their ratio (the target).
pub(super) fn armed_rows(armed: &Armed, floor_ns: f64) -> String {
    let name = armed.scenario.name;
    let t = armed.tcpq;
    let mut rows = format!(
        "| {name}: tcpq's programs + process per request, stats on (frames tracing) | {:.2} µs + {:.2} µs, {:.1} runs ({} of {}) | |\n",
        t.programs_ns / 1000.0,
        t.process_ns / 1000.0,
        t.runs,
        armed.tracing_frames,
        armed.frames,
    );
    match &armed.bpftrace {
        Ok(b) => rows.push_str(&format!(
            "| {name}: the bpftrace equivalent's programs + process per request, stats on | {:.2} µs + {:.2} µs, {:.1} runs | |\n\
             | **{name}: cost per request less the stats' own, tcpq / bpftrace** | {:.2} µs / {:.2} µs = **{:.2}×** | {} |\n",
            b.programs_ns / 1000.0,
            b.process_ns / 1000.0,
            b.runs,
            t.net_ns(floor_ns) / 1000.0,
            b.net_ns(floor_ns) / 1000.0,
            t.net_ns(floor_ns) / b.net_ns(floor_ns).max(1e-9),
            armed.scenario.target,
        )),
        Err(why) => rows.push_str(&format!(
            "| {name}: tcpq's cost per request less the stats' own | {:.2} µs | |\n| {name}: the bpftrace equivalent | {why} | |\n",
            t.net_ns(floor_ns) / 1000.0
        )),
    }
    rows
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn armed_cost_is_net_of_the_stats_floor() {
        let a = Accounted {
            programs_ns: 1000.0,
            runs: 10.0,
            process_ns: 200.0,
        };
        // 10 runs × 34 ns of stats overhead come off the programs' time, not the process's.
        assert_eq!(a.net_ns(34.0), 1000.0 - 340.0 + 200.0);
        assert_eq!(a.net_ns(500.0), 200.0);
        let armed = Armed {
            scenario: OVERFLOW,
            tcpq: a,
            tracing_frames: 4,
            frames: 5,
            bpftrace: Ok(Accounted {
                programs_ns: 2000.0,
                runs: 10.0,
                process_ns: 0.0,
            }),
        };
        let rows = armed_rows(&armed, 0.0);
        assert!(
            rows.contains("1.00 µs + 0.20 µs, 10.0 runs (4 of 5)"),
            "{rows}"
        );
        assert!(
            rows.contains("| 1.20 µs / 2.00 µs = **0.60×** | ≤ 1× |"),
            "{rows}"
        );
        let rows = armed_rows(
            &Armed {
                bpftrace: Err("not measured".into()),
                ..armed
            },
            0.0,
        );
        assert!(rows.contains("| not measured |"), "{rows}");
    }
}
