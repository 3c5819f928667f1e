//! deploy/kubernetes/tcpq.yaml, offline: every built-in object passes kubernetes-validate
//! --strict (the pinned PyPI package `cargo xtask setup` installs into target/deploy-venv); the
//! ServiceMonitor (a CRD kubernetes-validate has no schema for) is checked field by field; and the
//! objects agree with each other and with tcpq: the Service selects the DaemonSet's pods and names
//! its metrics port, the ServiceMonitor selects the Service, the container adds exactly the
//! capabilities the systemd unit grants (which tests/tests/package.rs ties to `tcpq check
//! --json`; as root this test also asks tcpq), the host paths tcpq reads are mounted, the liveness
//! probe GETs /metrics, and the requests cover BENCHMARKS.md's measured CPU and RSS.
use std::{collections::BTreeSet, path::PathBuf, process::Command};

use tcpq_tests::*;
use yaml_rust2::Yaml;

fn strings(y: &Yaml) -> BTreeSet<String> {
    yaml_strings(y).into_iter().collect()
}

/// matchLabels ⊆ labels.
fn selects(selector: &Yaml, labels: &Yaml) -> bool {
    let Some(sel) = selector.as_hash() else {
        return false;
    };
    !sel.is_empty() && sel.iter().all(|(k, v)| labels[k.as_str().unwrap()] == *v)
}

#[test]
fn builtin_objects_pass_kubernetes_validate_strict() {
    let test = "kubernetes_validate";
    let tool = PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("../target/deploy-venv/bin/kubernetes-validate");
    let missing = format!("{} missing (PyPI kubernetes-validate)", tool.display());
    let Some(tool) = present_or_skip(test, tool.exists().then_some(tool), &missing) else {
        return;
    };
    let out = Command::new(&tool)
        .arg("--strict")
        .arg(deploy_dir().join("kubernetes/tcpq.yaml"))
        .output()
        .expect("kubernetes-validate");
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        out.status.success(),
        "kubernetes-validate --strict:\n{text}"
    );
    for kind in ["namespace", "serviceaccount", "daemonset", "service"] {
        assert!(
            text.contains(&format!("passed for resource {kind}/tcpq")),
            "{kind} not validated:\n{text}"
        );
    }
    // The one object it cannot know, checked by the next test.
    assert!(text.contains("kind ServiceMonitor"), "{text}");
    eprintln!("{text}");
}

#[test]
fn service_monitor_service_and_daemonset_agree() {
    let docs = kubernetes_manifests();
    let ds = kubernetes_object(&docs, "DaemonSet");
    let svc = kubernetes_object(&docs, "Service");
    let sm = kubernetes_object(&docs, "ServiceMonitor");
    let pod = &ds["spec"]["template"];
    assert!(selects(
        &ds["spec"]["selector"]["matchLabels"],
        &pod["metadata"]["labels"]
    ));
    assert!(
        selects(&svc["spec"]["selector"], &pod["metadata"]["labels"]),
        "the Service selects the DaemonSet's pods"
    );
    assert_eq!(
        svc["spec"]["clusterIP"].as_str(),
        Some("None"),
        "one endpoint per node"
    );
    let container = &pod["spec"]["containers"][0];
    let port_names: BTreeSet<&str> = container["ports"]
        .as_vec()
        .unwrap()
        .iter()
        .filter_map(|p| p["name"].as_str())
        .collect();
    let svc_port = &svc["spec"]["ports"][0];
    assert!(port_names.contains(svc_port["targetPort"].as_str().unwrap()));

    // ServiceMonitor (monitoring.coreos.com/v1): the fields used exist in the CRD, it selects
    // the Service in its namespace and scrapes its named port.
    assert_eq!(sm["apiVersion"].as_str(), Some("monitoring.coreos.com/v1"));
    assert_eq!(sm["metadata"]["namespace"], svc["metadata"]["namespace"]);
    let spec = sm["spec"].as_hash().unwrap();
    for k in spec.keys() {
        let k = k.as_str().unwrap();
        assert!(
            [
                "selector",
                "namespaceSelector",
                "endpoints",
                "jobLabel",
                "targetLabels"
            ]
            .contains(&k),
            "ServiceMonitor spec has no field {k}"
        );
    }
    assert!(selects(
        &sm["spec"]["selector"]["matchLabels"],
        &svc["metadata"]["labels"]
    ));
    assert!(
        strings(&sm["spec"]["namespaceSelector"]["matchNames"])
            .contains(svc["metadata"]["namespace"].as_str().unwrap())
    );
    let endpoints = sm["spec"]["endpoints"].as_vec().expect("endpoints");
    assert!(!endpoints.is_empty());
    for e in endpoints {
        for k in e.as_hash().unwrap().keys() {
            let k = k.as_str().unwrap();
            assert!(
                [
                    "port",
                    "path",
                    "interval",
                    "scrapeTimeout",
                    "relabelings",
                    "metricRelabelings",
                    "honorLabels",
                    "scheme"
                ]
                .contains(&k),
                "ServiceMonitor endpoint has no field {k}"
            );
        }
        assert_eq!(e["port"], svc_port["name"], "the Service's port, by name");
        assert_eq!(e["path"].as_str(), Some("/metrics"));
        for d in ["interval", "scrapeTimeout"] {
            let v = e[d].as_str().unwrap();
            assert!(
                v.strip_suffix('s')
                    .is_some_and(|n| n.parse::<u32>().is_ok()),
                "{d}: {v}"
            );
        }
        for r in e["relabelings"].as_vec().into_iter().flatten() {
            for k in r.as_hash().unwrap().keys() {
                let k = k.as_str().unwrap();
                assert!(
                    [
                        "sourceLabels",
                        "targetLabel",
                        "regex",
                        "replacement",
                        "action",
                        "separator"
                    ]
                    .contains(&k),
                    "relabeling has no field {k}"
                );
            }
        }
    }
}

#[test]
fn daemonset_runs_tcpq_with_what_it_needs_and_no_more() {
    let docs = kubernetes_manifests();
    let ds = kubernetes_object(&docs, "DaemonSet");
    let spec = &ds["spec"]["template"]["spec"];
    assert_eq!(
        spec["hostPID"].as_bool(),
        Some(true),
        "socket owners in /proc"
    );
    assert_eq!(
        spec["hostNetwork"].as_bool(),
        Some(true),
        "the host's namespace is tcpq's own"
    );
    let c = &spec["containers"][0];
    let args = strings(&c["args"]);
    assert!(args.contains("export"), "{args:?}");
    assert_eq!(
        c["command"][0].as_str(),
        Some("/usr/bin/tcpq"),
        "the .deb's path"
    );

    // Capabilities: the systemd unit's bounding set (CAP_ prefix off), nothing privileged.
    let sc = &c["securityContext"];
    assert_eq!(sc["privileged"].as_bool(), Some(false));
    assert_eq!(sc["allowPrivilegeEscalation"].as_bool(), Some(false));
    assert_eq!(sc["readOnlyRootFilesystem"].as_bool(), Some(true));
    assert_eq!(
        strings(&sc["capabilities"]["drop"]),
        BTreeSet::from(["ALL".to_string()])
    );
    let added = strings(&sc["capabilities"]["add"]);
    let unit = std::fs::read_to_string(deploy_dir().join("systemd/tcpq-export.service")).unwrap();
    let bounding: BTreeSet<String> = unit
        .lines()
        .find_map(|l| l.strip_prefix("CapabilityBoundingSet="))
        .expect("the unit's CapabilityBoundingSet")
        .split_whitespace()
        .map(|c| c.trim_start_matches("CAP_").to_string())
        .collect();
    assert_eq!(
        added, bounding,
        "DaemonSet capabilities vs the systemd unit's"
    );
    if is_root() {
        let out = tcpq()
            .args(["check", "--json"])
            .output()
            .expect("tcpq check");
        let check: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
        let mut needed: BTreeSet<String> = check["export_keeps"]
            .as_array()
            .unwrap()
            .iter()
            .map(|c| {
                c["capability"]
                    .as_str()
                    .unwrap()
                    .trim_start_matches("CAP_")
                    .to_string()
            })
            .collect();
        needed.extend(["BPF".to_string(), "PERFMON".to_string()]);
        assert_eq!(added, needed, "DaemonSet capabilities vs tcpq check --json");
    }

    // The host paths tcpq reads.
    let mounts: Vec<(String, String)> = c["volumeMounts"]
        .as_vec()
        .unwrap()
        .iter()
        .map(|m| {
            let name = m["name"].as_str().unwrap();
            let vol = spec["volumes"]
                .as_vec()
                .unwrap()
                .iter()
                .find(|v| v["name"].as_str() == Some(name))
                .unwrap_or_else(|| panic!("no volume {name}"));
            assert_eq!(m["readOnly"].as_bool(), Some(true), "{name} read-only");
            (
                m["mountPath"].as_str().unwrap().to_string(),
                vol["hostPath"]["path"].as_str().unwrap_or("").to_string(),
            )
        })
        .collect();
    for p in [
        "/sys/kernel/btf",
        "/sys/fs/cgroup",
        "/sys/kernel/tracing",
        "/run/netns",
    ] {
        assert!(
            mounts.iter().any(|(m, h)| m == p && h == p),
            "host {p} not mounted at {p}: {mounts:?}"
        );
    }

    let probe = &c["livenessProbe"]["httpGet"];
    assert_eq!(probe["path"].as_str(), Some("/metrics"));
    assert_eq!(probe["port"].as_str(), Some("metrics"));

    // Resources from BENCHMARKS.md: the request covers the largest measured RSS and CPU.
    let bench =
        std::fs::read_to_string(PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../BENCHMARKS.md"))
            .unwrap();
    let mut rss_mib: f64 = 0.0;
    let mut cpu_share: f64 = 0.0;
    for line in bench.lines() {
        let cells: Vec<&str> = line.split('|').map(str::trim).collect();
        if cells.len() < 3 {
            continue;
        }
        let (what, value) = (cells[1], cells[2]);
        if what.contains("RSS") {
            for w in value.split(" MiB").filter_map(|s| s.rsplit(' ').next()) {
                if let Ok(v) = w.parse::<f64>() {
                    rss_mib = rss_mib.max(v);
                }
            }
        }
        if let Some(v) = value
            .split(" % of one CPU")
            .next()
            .filter(|_| value.contains("% of one CPU"))
            .and_then(|s| s.rsplit(' ').next()?.parse::<f64>().ok())
        {
            cpu_share = cpu_share.max(v / 100.0);
        }
        if what.contains("CPU per 1 s frame")
            && let Some(ms) = value
                .strip_suffix(" ms")
                .and_then(|v| v.parse::<f64>().ok())
        {
            cpu_share = cpu_share.max(ms / 1000.0);
        }
    }
    assert!(
        rss_mib > 0.0 && cpu_share > 0.0,
        "BENCHMARKS.md measures RSS and CPU"
    );
    let res = &c["resources"];
    let mem = |s: &str| -> f64 { s.strip_suffix("Mi").unwrap().parse().unwrap() };
    let cpu = |s: &str| -> f64 { s.strip_suffix('m').unwrap().parse::<f64>().unwrap() / 1000.0 };
    let (mem_req, mem_lim) = (
        mem(res["requests"]["memory"].as_str().unwrap()),
        mem(res["limits"]["memory"].as_str().unwrap()),
    );
    let (cpu_req, cpu_lim) = (
        cpu(res["requests"]["cpu"].as_str().unwrap()),
        cpu(res["limits"]["cpu"].as_str().unwrap()),
    );
    eprintln!(
        "BENCHMARKS.md: peak RSS {rss_mib} MiB, CPU {:.1} %; requests {mem_req} Mi / {}m, limits {mem_lim} Mi / {}m",
        cpu_share * 100.0,
        cpu_req * 1000.0,
        cpu_lim * 1000.0
    );
    assert!(mem_req >= rss_mib && mem_lim >= 2.0 * mem_req.max(rss_mib));
    assert!(cpu_req >= cpu_share && cpu_lim >= 10.0 * cpu_req);
}
