//! The container image of `cargo xtask dist` (target/dist/tcpq-VERSION-oci.tar, built offline by
//! xtask/src/image.rs). Read here with plain JSON, not the types that wrote it:
//! - the OCI layout verifies: index.json → manifest → config and layer, every blob's sha256 and
//!   size as its descriptor says, the config's diff_id is the uncompressed layer's, Docker's
//!   manifest.json names the same blobs and the same reference, and that reference is the image
//!   deploy/kubernetes/tcpq.yaml runs;
//! - the layer holds /usr/bin/tcpq and exactly the libraries `ldd` names for it (ld-linux
//!   included), and, as root, the binary runs by chroot into the unpacked layer (`--version`,
//!   `check --json` with every hook attached);
//! - with a runtime (root; podman and runc from `cargo xtask setup`): `podman load`, then the
//!   DaemonSet's container — its command and args, host PID and network namespaces, capabilities,
//!   host mounts, read-only root, no privilege escalation, CPU and memory limits, all read from
//!   the manifest — serves /metrics; while `tcpq lab overflow` overflows a listener in a network
//!   namespace on the host, its `tcpq_listen_refused_total` for that listener equals the
//!   namespace's ListenDrops, and names the lab's process; then the container is stopped
//!   (SIGTERM: exit 0), removed, and the image removed.
use std::{
    collections::BTreeSet,
    path::PathBuf,
    process::Command,
    thread,
    time::{Duration, Instant},
};

use serde_json::Value;
use tcpq_tests::{image::*, *};

#[test]
fn oci_archive_verifies_and_is_the_image_the_daemonset_runs() {
    let test = "image_layout";
    let Some(archive) = archive(test) else {
        return;
    };
    let image = verified(&archive);
    let version = env!("CARGO_PKG_VERSION");
    assert_eq!(image.reference, format!("localhost/tcpq:{version}"));
    assert!(
        archive.ends_with(format!("tcpq-{version}-oci.tar")),
        "{}",
        archive.display()
    );
    let pod = daemonset_pod();
    assert_eq!(
        pod["containers"][0]["image"].as_str(),
        Some(image.reference.as_str()),
        "the DaemonSet runs the image dist builds"
    );
    let c = &image.config["config"];
    assert_eq!(
        c["Entrypoint"],
        serde_json::json!(["/usr/bin/tcpq", "export"])
    );
    assert_eq!(
        yaml_strings(&pod["containers"][0]["command"]),
        ["/usr/bin/tcpq"],
        "the DaemonSet's command is the image's binary"
    );
    assert!(c["ExposedPorts"]["9464/tcp"].is_object(), "{c}");
    let labels = &c["Labels"];
    assert_eq!(labels["org.opencontainers.image.title"], "tcpq");
    assert_eq!(labels["org.opencontainers.image.version"], version);
    assert_eq!(
        labels["org.opencontainers.image.licenses"],
        "MIT OR Apache-2.0"
    );
    assert!(
        labels["org.opencontainers.image.revision"]
            .as_str()
            .is_some_and(|r| r.len() >= 40),
        "{labels}"
    );
    assert_eq!(
        labels["org.opencontainers.image.created"],
        image.config["created"]
    );
    eprintln!(
        "{test}: {} ({} bytes; layer {} bytes uncompressed)",
        image.reference,
        std::fs::metadata(&archive).unwrap().len(),
        image.layer_tar.len()
    );
}

#[test]
fn the_layer_holds_tcpq_and_exactly_its_libraries_and_runs_by_chroot() {
    let test = "image_layer";
    let Some(archive) = archive(test) else {
        return;
    };
    let image = verified(&archive);
    let (dir, files) = unpack(&image.layer_tar);
    struct Remove(PathBuf);
    impl Drop for Remove {
        fn drop(&mut self) {
            let _ = std::fs::remove_dir_all(&self.0);
        }
    }
    let _remove = Remove(dir.clone());
    let bin = dir.join("usr/bin/tcpq");
    // What the dynamic loader needs for the binary in the layer, as this machine resolves it.
    let ldd = Command::new("ldd").arg(&bin).output().expect("ldd");
    let ldd = String::from_utf8_lossy(&ldd.stdout);
    let mut wanted: BTreeSet<String> = ldd
        .lines()
        .filter_map(|l| {
            let p = l.trim().split_once(" => ").map_or(l.trim(), |(_, p)| p);
            let p = p.split(" (").next()?.trim();
            p.starts_with('/').then(|| p.to_string())
        })
        .collect();
    assert!(
        wanted.iter().any(|l| l.contains("ld-linux")),
        "ldd names the loader: {ldd}"
    );
    wanted.insert("/usr/bin/tcpq".into());
    assert_eq!(files, wanted, "the layer's files vs ldd:\n{ldd}");
    if !is_root() {
        eprintln!("SKIPPED {test} (chroot part): needs root (chroot, mounts, eBPF)");
        return;
    }
    let version = Command::new("chroot")
        .arg(&dir)
        .args(["/usr/bin/tcpq", "--version"])
        .output()
        .expect("chroot");
    assert!(version.status.success(), "{version:?}");
    assert_eq!(
        String::from_utf8_lossy(&version.stdout).trim(),
        format!("tcpq {}", env!("CARGO_PKG_VERSION"))
    );
    // check --json inside the layer, with /proc and /sys mounted in a private mount namespace
    // (what a runtime gives a container): only the layer's libraries are there to load.
    for d in ["proc", "sys"] {
        std::fs::create_dir_all(dir.join(d)).unwrap();
    }
    let d = dir.display();
    let out = Command::new("unshare")
        .args(["--mount", "--propagation", "private", "sh", "-c"])
        .arg(format!(
            "mount -t proc proc {d}/proc && mount --rbind /sys {d}/sys && exec chroot {d} /usr/bin/tcpq check --json"
        ))
        .output()
        .expect("unshare (util-linux)");
    let check: Value = serde_json::from_slice(&out.stdout).unwrap_or_else(|e| {
        panic!(
            "check --json in the layer: {e}: {}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        )
    });
    assert_eq!(check["ok"], true, "{check}");
    let hooks = check["hooks"].as_array().expect("hooks");
    assert!(
        !hooks.is_empty() && hooks.iter().all(|h| h["state"] == "attached"),
        "every hook attached from the layer: {check}"
    );
    eprintln!(
        "{test}: {} files, {} hooks attached from the chroot",
        files.len(),
        hooks.len()
    );
}

#[test]
fn the_image_runs_under_podman_with_the_daemonsets_privileges() {
    let test = "image_podman";
    if skip_unless_root(test) {
        return;
    }
    let Some(archive) = archive(test) else {
        return;
    };
    if tool_or_skip(test, "podman", "podman").is_none()
        || tool_or_skip(test, "runc", "runc").is_none()
    {
        return;
    }
    let started = Instant::now();
    let image = verified(&archive).reference;
    let (present, _, _) = podman(&["image", "exists", &image]);
    if present {
        eprintln!("SKIPPED {test}: podman already holds {image}; not touching it");
        return;
    }
    let container = format!("tcpq-image-test-{}", std::process::id());
    let mut cleanup = Cleanup {
        container: container.clone(),
        image: image.clone(),
        created: Vec::new(),
    };
    let (ok, out, err) = podman(&["load", "--input", archive.to_str().unwrap()]);
    assert!(ok, "podman load: {out}{err}");
    assert!(
        out.contains(&format!("Loaded image: {image}"))
            || out.contains(&format!("Loaded image(s): {image}")),
        "podman load names it {image}: {out}"
    );
    let loaded = started.elapsed();

    let pod = daemonset_pod();
    let c = &pod["containers"][0];
    let addr = free_loopback_addr();
    let port = addr.rsplit_once(':').unwrap().1;
    let mut args = yaml_strings(&c["args"]);
    // The DaemonSet serves $(NODE_IP):9464; here a free loopback port.
    for a in &mut args {
        if a.starts_with("$(NODE_IP):") {
            *a = format!("127.0.0.1:{port}");
        }
    }
    assert!(args.contains(&addr), "the DaemonSet's --listen: {args:?}");
    let command = yaml_strings(&c["command"]);
    let mut run: Vec<String> = vec![
        "run".into(),
        "--detach".into(),
        format!("--name={container}"),
    ];
    // crun 1.8 (Debian 12's default) refuses this machine's cgroup hybrid mode (v1 controllers
    // plus hugetlb on the v2 hierarchy at /sys/fs/cgroup/unified): "cgroups in hybrid mode not
    // supported, drop all controllers from cgroupv2", also with --cgroups=disabled. runc runs
    // there as on cgroup v1 and v2.
    run.push("--runtime=runc".into());
    run.extend(daemonset_flags(&pod, &mut cleanup.created));
    run.push(format!("--entrypoint={}", command[0]));
    run.push(image.clone());
    run.extend(args);
    let run_refs: Vec<&str> = run.iter().map(String::as_str).collect();
    let (ok, out, err) = podman(&run_refs);
    assert!(ok, "podman {run:?}: {out}{err}");

    let logs = || {
        let (_, out, err) = podman(&["logs", &container]);
        format!("{out}{err}")
    };
    let t = Instant::now();
    let page = loop {
        if let Some(p) = scrape(&addr).filter(|p| {
            metric_series(p)
                .get("tcpq_last_update_seconds")
                .is_some_and(|v| *v > 0.0)
        }) {
            break p;
        }
        let (_, state, _) = podman(&["inspect", "--format", "{{.State.Status}}", &container]);
        assert!(
            t.elapsed() < Duration::from_secs(30) && state == "running",
            "the container never served /metrics ({state}): podman {run:?}: {}",
            logs()
        );
        thread::sleep(Duration::from_millis(200));
    };
    let serving = t.elapsed();
    for series in [
        "tcpq_lost_events_total",
        "tcpq_family_armed",
        "tcpq_conntrack_max",
        "tcpq_process_resident_memory_bytes",
    ] {
        assert!(page.contains(series), "{series} missing: {page}");
    }
    let (_, pid, _) = podman(&["inspect", "--format", "{{.State.Pid}}", &container]);
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    assert!(
        status.lines().any(|l| l == "NoNewPrivs:\t1"),
        "no_new_privs in the container: {status}"
    );
    assert!(
        logs().contains(
            "capabilities kept: CAP_SYS_ADMIN CAP_NET_ADMIN CAP_SYS_PTRACE CAP_DAC_READ_SEARCH"
        ),
        "{}",
        logs()
    );

    // An overflow on the host, in a namespace of its own: the container sees it through the host's
    // processes (hostPID), the cgroup2 root (cgroup_skb) and setns (tier 0), and counts what the
    // kernel counted. tcpq finds a namespace through a process whose main thread is in it (a
    // pod's pause process) or its name under /run/netns (mounted with HostToContainer
    // propagation); `tcpq lab` enters it from threads only — a process holds it too, as in a pod.
    let ns = Netns::new("image");
    let inode = ns.inode();
    struct Holder(std::process::Child);
    impl Drop for Holder {
        fn drop(&mut self) {
            let _ = self.0.kill();
            let _ = self.0.wait();
        }
    }
    let _holder = Holder(
        Command::new("ip")
            .args(["netns", "exec", &ns.name, "sleep", "300"])
            .spawn()
            .expect("ip netns exec sleep"),
    );
    let t = Instant::now();
    while t.elapsed() < Duration::from_secs(5)
        && !scrape(&addr).is_some_and(|p| p.contains(&format!("netns=\"{inode}\"")))
    {
        thread::sleep(Duration::from_millis(250));
    }
    let before = ns.counters();
    let (facts, done) = run_lab(&ns, &["overflow", "--duration", "3"]);
    let after = ns.counters();
    let drops = delta(&before, &after, "TcpExt:ListenDrops");
    assert!(drops > 0, "the lab overflowed: {done}");
    let listener = format!("127.0.0.1:{}", facts["lport"]);
    let ended = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs_f64();
    // Settled: two pages published after the lab ended agree (see prometheus.rs).
    let mut last: Option<(f64, f64)> = None;
    let t = Instant::now();
    let (counted, page) = loop {
        assert!(
            t.elapsed() < Duration::from_secs(45),
            "tcpq's count never settled: {last:?}: {}",
            logs()
        );
        thread::sleep(Duration::from_millis(1100));
        let Some(p) = scrape(&addr) else { continue };
        let series = metric_series(&p);
        let Some(&updated) = series.get("tcpq_last_update_seconds") else {
            continue;
        };
        if updated <= ended {
            continue;
        }
        let v = listener_refused(&series, inode, &listener);
        match last {
            Some((u, prev)) if u < updated && prev == v => break (v, p),
            Some((u, _)) if u >= updated => {}
            _ => last = Some((updated, v)),
        }
    };
    let ours: Vec<&str> = page
        .lines()
        .filter(|l| l.contains(&format!("netns=\"{inode}\"")))
        .collect();
    let refusals: Vec<&&str> = ours
        .iter()
        .filter(|l| l.starts_with("tcpq_listen_refus"))
        .collect();
    eprintln!("kernel ListenDrops {drops}; tcpq in the container counted {counted}: {refusals:#?}");
    assert_eq!(
        counted, drops as f64,
        "tcpq_listen_refused_total from the container vs the namespace's ListenDrops"
    );
    assert!(
        ours.iter()
            .any(|l| l.starts_with("tcpq_listen_refused_total{")
                && l.contains("process=\"tcpq-lab\"")),
        "the listener's process, through the host's /proc: {ours:#?}"
    );
    let series = metric_series(&page);
    assert!(
        series.get("tcpq_events_total").is_some_and(|v| *v > 0.0),
        "the armed programs delivered events to the container: {page}"
    );

    // Stopped as kubelet stops it (SIGTERM, then the grace period): tcpq exits 0.
    let grace = pod["terminationGracePeriodSeconds"].as_i64().unwrap_or(30);
    let t = Instant::now();
    let (ok, _, err) = podman(&["stop", "--time", &grace.to_string(), &container]);
    assert!(ok, "podman stop: {err}");
    let stopped = t.elapsed();
    let (_, code, _) = podman(&["inspect", "--format", "{{.State.ExitCode}}", &container]);
    assert_eq!(code, "0", "tcpq's exit on SIGTERM: {}", logs());
    assert!(stopped < Duration::from_secs(grace as u64), "{stopped:?}");
    let (ok, _, err) = podman(&["rm", &container]);
    assert!(ok, "podman rm: {err}");
    let (ok, _, err) = podman(&["rmi", &image]);
    assert!(ok, "podman rmi: {err}");
    let (gone, _, _) = podman(&["container", "exists", &container]);
    assert!(!gone);
    drop(cleanup);
    eprintln!(
        "{test}: loaded in {loaded:?}, serving {serving:?} after run, stopped in {stopped:?}, {:?} in all",
        started.elapsed()
    );
}
