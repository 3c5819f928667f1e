//! The .deb's tcpq-export unit under a real systemd (issue 17): PID 1 here is not systemd, so
//! the package is booted in a systemd-nspawn container — this machine's /usr (with an empty,
//! volatile /etc, so nothing of the host's starts), the package's files laid over it, its
//! /etc/default file bound in, and the unit enabled as `systemctl enable` would (a symlink in its
//! WantedBy target's .wants directory). The container has a network namespace of its own and
//! its cgroup namespace is rooted at nspawn's `payload` cgroup: that is the cgroup2 root the
//! exporter finds and attaches its cgroup_skb program to, so it sees the container's sockets.
//! nspawn's seccomp filter refuses bpf() and perf_event_open() and its capability set lacks
//! CAP_BPF and CAP_PERFMON: both are granted (`--system-call-filter`, `--capability`).
//!
//! Checked: systemd starts the unit at boot and it serves /metrics; a `tcpq lab overflow` run
//! inside the container as a transient systemd service, in the container's network namespace,
//! is counted exactly (`tcpq_listen_refused_total` = the namespace's ListenDrops) with the lab's
//! process name, and with refusal kinds (the cgroup_skb program attached in the container); the
//! unit's hardening is in effect on the running exporter (capability sets, no_new_privs, a
//! seccomp filter, a read-only root, its own /tmp, `systemd-analyze security` rating OK);
//! `systemctl stop` leaves it inactive with result success and its programs detached; the
//! container powers off and leaves no process, mount, network namespace, cgroup or
//! /run/systemd/nspawn* directory behind. Root; `cargo xtask setup` installs systemd-container
//! and `cargo xtask dist` builds the package.
use std::{
    collections::BTreeSet,
    fs::File,
    os::unix::fs::MetadataExt as _,
    path::PathBuf,
    process::{Command, Stdio},
    thread,
    time::{Duration, Instant},
};

use tcpq_tests::{systemd::*, *};

#[test]
fn the_deb_unit_runs_hardened_under_systemd_in_nspawn_and_counts_exactly() {
    let test = "systemd_unit";
    if skip_unless_root(test) {
        return;
    }
    let Some(nspawn) = tool_or_skip(test, "systemd-nspawn", "systemd-container") else {
        return;
    };
    // The container's PID 1 is this machine's systemd (from /usr).
    let Some(_) = present_or_skip(
        test,
        Some(PathBuf::from("/lib/systemd/systemd")).filter(|p| p.exists()),
        "/lib/systemd/systemd is missing (Debian package systemd)",
    ) else {
        return;
    };
    let Some(deb) = newest_in_dist(test, ".deb") else {
        return;
    };
    let started = Instant::now();

    // The package, unpacked; its /lib goes under /usr as on a merged-/usr system (the container
    // gets only /usr from this machine; systemd links /lib to usr/lib in the empty root).
    let scratch =
        Scratch(std::env::temp_dir().join(format!("tcpq-systemd-{}", std::process::id())));
    let pkg = scratch.0.join("pkg");
    std::fs::create_dir_all(&pkg).expect("scratch directory");
    let out = Command::new("dpkg-deb")
        .arg("-x")
        .arg(&deb)
        .arg(&pkg)
        .output()
        .expect("dpkg-deb");
    assert!(
        out.status.success(),
        "dpkg-deb -x {}: {out:?}",
        deb.display()
    );
    std::fs::create_dir_all(pkg.join("usr/lib")).expect("usr/lib");
    for e in std::fs::read_dir(pkg.join("lib")).expect("the package's /lib") {
        let e = e.expect("entry of /lib");
        std::fs::rename(e.path(), pkg.join("usr/lib").join(e.file_name()))
            .expect("move to usr/lib");
    }
    let unit_text = std::fs::read_to_string(pkg.join("usr/lib/systemd/system").join(UNIT))
        .expect("the package's unit");
    let defaults = pkg.join("etc/default/tcpq-export");
    let env_file = unit_setting(&unit_text, "EnvironmentFile").expect("EnvironmentFile");
    assert_eq!(env_file.trim_start_matches('-'), "/etc/default/tcpq-export");
    let args = unit_setting(
        &std::fs::read_to_string(&defaults).expect("the package's /etc/default file"),
        "TCPQ_EXPORT_ARGS",
    )
    .expect("TCPQ_EXPORT_ARGS");
    let addr = args
        .split_whitespace()
        .skip_while(|w| *w != "--listen")
        .nth(1)
        .expect("--listen in TCPQ_EXPORT_ARGS")
        .to_string();
    let bounding: BTreeSet<String> = unit_setting(&unit_text, "CapabilityBoundingSet")
        .expect("CapabilityBoundingSet")
        .split_whitespace()
        .map(String::from)
        .collect();
    // `systemctl enable`: a link in the WantedBy target's .wants directory.
    let wanted_by = unit_setting(&unit_text, "WantedBy").expect("WantedBy");
    let wants = scratch.0.join("wants");
    std::fs::create_dir(&wants).expect("wants directory");
    std::os::unix::fs::symlink(format!("/lib/systemd/system/{UNIT}"), wants.join(UNIT))
        .expect("wants link");

    let machine = format!("tcpq-test-{}", std::process::id());
    let run_dirs = RunDirs::new(&machine);
    let cgroups = NspawnCgroups::new();
    let log = scratch.0.join("console.log");
    let caps: Vec<&str> = bounding.iter().map(String::as_str).collect();
    let nspawn_args: Vec<String> = vec![
        "--quiet".into(),
        "--register=no".into(),
        "--keep-unit".into(),
        format!("--machine={machine}"),
        "--directory=/".into(),
        "--volatile=yes".into(),
        "--private-network".into(),
        "--console=read-only".into(),
        format!("--overlay-ro=/usr:{}:/usr", pkg.join("usr").display()),
        format!("--bind-ro={}:/etc/default/tcpq-export", defaults.display()),
        format!(
            "--bind-ro={}:/etc/systemd/system/{wanted_by}.wants",
            wants.display()
        ),
        format!("--capability={}", caps.join(",")),
        "--system-call-filter=bpf perf_event_open".into(),
        "--boot".into(),
        "--".into(),
        // An empty /etc is a first boot: systemd would enable every unit of /usr by preset.
        "systemd.condition-first-boot=false".into(),
    ];
    // nspawn joins the test's cgroups (one per hierarchy) before it starts.
    let mut join = String::new();
    for (i, _) in cgroups.0.iter().enumerate() {
        join.push_str(&format!("echo $$ > \"${}\" && ", i + 1));
    }
    join.push_str(&format!("shift {} && exec \"$@\"", cgroups.0.len()));
    let t_boot = Instant::now();
    let mut container = Container {
        nspawn: Command::new("sh")
            .args(["-c", &join, "sh"])
            .args(cgroups.0.iter().map(|c| c.join("cgroup.procs")))
            .arg(&nspawn)
            .args(&nspawn_args)
            .stdin(Stdio::null())
            .stdout(File::create(&log).expect("console log"))
            .stderr(Stdio::from(
                File::create(scratch.0.join("nspawn.err")).expect("log"),
            ))
            .spawn()
            .expect("systemd-nspawn"),
        leader: 0,
    };
    let nspawn_pid = container.nspawn.id().to_string();
    let err_log = scratch.0.join("nspawn.err");
    let why = |what: &str| {
        format!(
            "{what}: {}\n--- console:\n{}",
            std::fs::read_to_string(&err_log).unwrap_or_default(),
            std::fs::read_to_string(&log).unwrap_or_default()
        )
    };
    let leader = wait_for(
        Duration::from_secs(20),
        || why("the container's PID 1 never appeared"),
        || {
            if container.nspawn.try_wait().ok().flatten().is_some() {
                panic!("{}", why("systemd-nspawn exited"));
            }
            host_pids(|s| {
                s.lines().any(|l| l == format!("PPid:\t{nspawn_pid}"))
                    && inner_pid(s).as_deref() == Some("1")
            })
            .first()
            .copied()
        },
    );
    container.leader = leader;
    let pid_ns = ns_inode(leader, "pid").expect("the container's pid namespace");
    let net_ns = ns_inode(leader, "net").expect("the container's network namespace");
    assert_ne!(
        ns_inode(std::process::id(), "net"),
        Some(net_ns),
        "a private network"
    );
    wait_for(
        Duration::from_secs(30),
        || {
            why(&format!(
                "{UNIT} never became active: {}\n--- journal:\n{}",
                container.property("ActiveState"),
                container.journal()
            ))
        },
        || {
            let out = container.exec(&["systemctl", "is-active", UNIT]);
            (String::from_utf8_lossy(&out.stdout).trim() == "active").then_some(())
        },
    );
    let booted = t_boot.elapsed();
    // Boot settled: no unit failed (a unit of this machine's /usr failing in the container is
    // reported, not fatal: it is not tcpq's).
    let state = String::from_utf8_lossy(
        &container
            .exec(&["systemctl", "is-system-running", "--wait"])
            .stdout,
    )
    .trim()
    .to_string();
    if state != "running" {
        eprintln!(
            "{test}: the container's system is {state}: {}",
            String::from_utf8_lossy(
                &container
                    .exec(&["systemctl", "--failed", "--no-pager"])
                    .stdout
            )
        );
    }
    assert_eq!(container.property("UnitFileState"), "enabled");

    // The container's network namespace, named on the host for its counters.
    let ns = Netns::attach(&format!("tqt-systemd-{}", std::process::id()), leader);
    assert_eq!(ns.inode(), net_ns);
    let netns_path = PathBuf::from("/run/netns").join(&ns.name);
    wait_for(
        Duration::from_secs(20),
        || {
            why(&format!(
                "/metrics at {addr} never answered:\n{}",
                container.journal()
            ))
        },
        || {
            scrape_in(&netns_path, &addr).filter(|p| {
                metric_series(p)
                    .get("tcpq_last_update_seconds")
                    .is_some_and(|v| *v > 0.0)
            })
        },
    );

    // The exporter as systemd runs it: its pid in the container, and on the host.
    let main_pid = container.property("MainPID");
    let exporter = host_pids(|s| inner_pid(s).as_deref() == Some(main_pid.as_str()))
        .into_iter()
        .find(|p| ns_inode(*p, "pid") == Some(pid_ns))
        .expect("the exporter's host pid");
    let journal = container.journal();
    let kept: Vec<&str> = journal
        .lines()
        .find_map(|l| l.split("capabilities kept: ").nth(1))
        .unwrap_or_else(|| panic!("no 'capabilities kept' in the journal: {journal}"))
        .trim_end_matches(')')
        .split_whitespace()
        .collect();
    let unit_mask = cap_mask(bounding.iter().map(String::as_str));
    let kept_mask = cap_mask(kept.iter().copied());
    assert_eq!(
        kept_mask & !unit_mask,
        0,
        "kept {kept:?} outside the unit's {bounding:?}"
    );
    let tasks: Vec<PathBuf> = std::fs::read_dir(format!("/proc/{exporter}/task"))
        .expect("the exporter's tasks")
        .filter_map(Result::ok)
        .map(|e| e.path())
        .collect();
    for task in &tasks {
        let status = std::fs::read_to_string(task.join("status")).expect("task status");
        for (field, want) in [
            ("CapBnd:", unit_mask),
            ("CapPrm:", kept_mask),
            ("CapEff:", kept_mask),
            ("CapInh:", 0),
            ("CapAmb:", 0),
            ("NoNewPrivs:", 1),
            // 2: a seccomp filter (SystemCallArchitectures, RestrictAddressFamilies, …).
            ("Seccomp:", 2),
        ] {
            let got = status_field(&status, field);
            assert_eq!(got, want, "{} {field} {got:#x}", task.display());
        }
    }
    let mountinfo =
        std::fs::read_to_string(format!("/proc/{exporter}/mountinfo")).expect("its mountinfo");
    let mount = |point: &str| {
        mountinfo
            .lines()
            .rfind(|l| l.split(' ').nth(4) == Some(point))
            .map(String::from)
    };
    let root = mount("/").expect("a root mount");
    assert!(
        root.split(' ')
            .nth(5)
            .is_some_and(|o| o.split(',').any(|o| o == "ro")),
        "ProtectSystem=strict: / is read-only: {root}"
    );
    assert!(mount("/tmp").is_some(), "PrivateTmp: /tmp of its own");
    let cgroup = std::fs::read_to_string(format!("/proc/{exporter}/cgroup")).expect("its cgroup");
    assert!(
        cgroup
            .lines()
            .any(|l| l.starts_with("0::") && l.ends_with(&format!("/system.slice/{UNIT}"))),
        "{cgroup}"
    );
    let security = container.exec(&["systemd-analyze", "security", "--no-pager", UNIT]);
    let security = String::from_utf8_lossy(&security.stdout).into_owned();
    let exposure: f64 = security
        .lines()
        .find_map(|l| l.split("Overall exposure level for ").nth(1))
        .and_then(|l| l.split_whitespace().nth(1)?.parse().ok())
        .unwrap_or_else(|| panic!("no exposure level: {security}"));
    assert!(
        exposure < 5.0,
        "systemd-analyze security rates the unit {exposure} (5.0 is MEDIUM)"
    );

    // A listener overflow inside the container: the lab as a transient service of the
    // container's systemd (its cgroup, its pid namespace), in the container's own namespace.
    container.ok(&["ip", "netns", "attach", "tcpq-lab", "1"]);
    let before = ns.counters();
    let t_lab = Instant::now();
    let lab = container.ok(&[
        "systemd-run",
        "--wait",
        "--pipe",
        "--quiet",
        "--collect",
        "--unit=tcpq-lab",
        "--",
        "/usr/bin/tcpq",
        "lab",
        "overflow",
        "--netns",
        "tcpq-lab",
        "--port",
        &LAB_PORT.to_string(),
        "--json",
    ]);
    let lab_took = t_lab.elapsed();
    let facts: serde_json::Value =
        serde_json::from_str(lab.lines().next().unwrap_or_default()).expect("lab JSON");
    assert_eq!(facts["netns_inode"].as_u64(), Some(net_ns), "{lab}");
    let drops = delta(&before, &ns.counters(), "TcpExt:ListenDrops");
    assert!(drops > 0, "the lab overflowed nothing: {lab}");
    let listener = format!("127.0.0.1:{LAB_PORT}");
    let t_count = Instant::now();
    let series = loop {
        let series = scrape_in(&netns_path, &addr)
            .map(|p| metric_series(&p))
            .unwrap_or_default();
        if listener_refused(&series, net_ns, &listener) as u64 == drops {
            break series;
        }
        assert!(
            t_count.elapsed() < Duration::from_secs(15),
            "tcpq_listen_refused_total never reached ListenDrops {drops}: {series:?}"
        );
        thread::sleep(Duration::from_millis(200));
    };
    assert!(
        series
            .keys()
            .any(|k| k.starts_with("tcpq_listen_refused_total{")
                && k.contains(&format!("listener=\"{listener}\""))
                && k.contains("process=\"tcpq-lab\"")),
        "the lab's process name: {series:?}"
    );
    let kinds: f64 = series
        .iter()
        .filter(|(k, _)| {
            k.starts_with("tcpq_listen_refusals_total{")
                && k.contains(&format!("listener=\"{listener}\""))
        })
        .map(|(_, v)| v)
        .sum();
    assert!(
        kinds > 0.0,
        "no refusal kinds: cgroup_skb saw nothing in the container: {series:?}"
    );
    let attached = attached_by(exporter);
    assert!(
        attached.iter().any(|p| p == "listen_ingress"),
        "the exporter's programs: {attached:?}"
    );
    let programs = bpf_programs_of(exporter);

    // systemctl stop: SIGTERM, a clean exit, every program detached.
    container.ok(&["systemctl", "stop", UNIT]);
    assert_eq!(container.property("ActiveState"), "inactive");
    assert_eq!(
        container.property("Result"),
        "success",
        "{}",
        container.journal()
    );
    assert_eq!(container.property("ExecMainStatus"), "0");
    let left: Vec<_> = attached_tcpq_programs()
        .into_iter()
        .filter(|a| programs.contains(&a.prog_id))
        .collect();
    assert!(left.is_empty(), "attached after stop: {left:?}");

    // Power off; nothing stays.
    let t_off = Instant::now();
    let _ = container.exec(&["systemctl", "poweroff"]);
    let status = wait_for(
        Duration::from_secs(30),
        || why("the container did not power off"),
        || container.nspawn.try_wait().ok().flatten(),
    );
    let off = t_off.elapsed();
    assert!(
        status.success(),
        "{}",
        why(&format!("systemd-nspawn: {status}"))
    );
    assert_eq!(
        in_namespace("pid", pid_ns),
        Vec::<u32>::new(),
        "processes of the container"
    );
    assert_eq!(
        in_namespace("net", net_ns),
        Vec::<u32>::new(),
        "processes in its netns"
    );
    assert_eq!(
        cgroups.procs(),
        Vec::<String>::new(),
        "processes in nspawn's cgroups"
    );
    drop(ns);
    let named: Vec<_> = std::fs::read_dir("/run/netns")
        .map(|d| {
            d.filter_map(Result::ok)
                .filter(|e| e.metadata().is_ok_and(|m| m.ino() == net_ns))
                .map(|e| e.path())
                .collect()
        })
        .unwrap_or_default();
    assert!(
        named.is_empty(),
        "the container's netns still named: {named:?}"
    );
    let mounts = std::fs::read_to_string("/proc/self/mountinfo").expect("mountinfo");
    let scratch_path = scratch.0.to_string_lossy().into_owned();
    let stray: Vec<&str> = mounts
        .lines()
        .filter(|l| {
            l.contains(&scratch_path) || l.contains("/run/systemd/nspawn") || l.contains(&machine)
        })
        .collect();
    assert!(stray.is_empty(), "mounts left: {stray:?}");
    cgroups.remove();
    assert!(
        cgroups.0.iter().all(|c| !c.exists()),
        "cgroups left: {:?}",
        cgroups.tree()
    );
    run_dirs.remove();
    assert!(run_dirs.left().is_empty(), "left: {:?}", run_dirs.left());
    eprintln!(
        "{test}: booted to {UNIT} active in {booted:?}, lab {lab_took:?} ({drops} refused = ListenDrops; refusal kinds {kinds}), powered off in {off:?}, exposure {exposure}; {:?} in all",
        started.elapsed()
    );
}
