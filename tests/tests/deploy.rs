//! deploy/: the Prometheus alert rules pass `promtool check rules` and their unit tests
//! (`promtool test rules`: each alert fires for the series in trouble and no other, with a summary
//! naming the fix); the rules and the Grafana dashboard name only series `tcpq export` exports
//! (metrics::EXPORTED, itself checked against the registry), with labels those series carry; the
//! dashboard's PromQL parses (promtool, as recording rules). No root needed.
use std::{collections::BTreeSet, path::Path, process::Command};

use serde_json::Value;
use tcpq::live::metrics::EXPORTED;
use tcpq_tests::*;
use yaml_rust2::{Yaml, YamlLoader};

/// Series Prometheus itself makes for every target (the rules watch tcpq being down with `up`).
const PROMETHEUS_SERIES: &[&str] = &["up", "scrape_duration_seconds"];
/// Labels every series carries once scraped (target labels).
const TARGET_LABELS: &[&str] = &["job", "instance"];

fn load_yaml(path: &Path) -> Vec<Yaml> {
    let text = std::fs::read_to_string(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    YamlLoader::load_from_str(&text).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

/// Every `expr` of the alert rules, with its alert name.
fn rule_exprs() -> Vec<(String, String)> {
    let docs = load_yaml(&deploy_dir().join("prometheus/tcpq-rules.yml"));
    let mut out = Vec::new();
    for g in docs[0]["groups"].as_vec().expect("groups") {
        for r in g["rules"].as_vec().expect("rules") {
            let name = r["alert"]
                .as_str()
                .or(r["record"].as_str())
                .expect("alert or record")
                .to_string();
            out.push((name, r["expr"].as_str().expect("expr").to_string()));
        }
    }
    out
}

/// Every PromQL expression of the dashboard (panel targets, nested rows included, and the
/// template variables' `label_values(...)` queries), with the panel's title.
fn dashboard_exprs() -> Vec<(String, String)> {
    let path = deploy_dir().join("grafana/tcpq.json");
    let dash: Value = serde_json::from_str(&std::fs::read_to_string(&path).unwrap())
        .unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    fn walk(v: &Value, title: &str, out: &mut Vec<(String, String)>) {
        match v {
            Value::Object(m) => {
                let title = m.get("title").and_then(Value::as_str).unwrap_or(title);
                for (k, x) in m {
                    match (k.as_str(), x) {
                        ("expr", Value::String(e)) => out.push((title.to_string(), e.clone())),
                        ("definition", Value::String(e)) => {
                            // label_values(METRIC, LABEL): the metric part.
                            let inner = e
                                .strip_prefix("label_values(")
                                .and_then(|r| r.strip_suffix(')'))
                                .unwrap_or_else(|| panic!("unexpected variable query {e}"));
                            let metric = inner.split(',').next().unwrap().trim();
                            out.push((format!("variable {title}"), metric.to_string()));
                        }
                        _ => walk(x, title, out),
                    }
                }
            }
            Value::Array(a) => a.iter().for_each(|x| walk(x, title, out)),
            _ => {}
        }
    }
    let mut out = Vec::new();
    walk(&dash, "", &mut out);
    out
}

/// The problems of one expression: names tcpq does not export, matchers or groupings on labels
/// its series do not carry.
fn check_expr(what: &str, expr: &str) -> Vec<String> {
    let refs = promql_refs(&grafana_to_promql(expr));
    let mut problems = Vec::new();
    let mut labels_here: BTreeSet<&str> = TARGET_LABELS.iter().copied().collect();
    if refs.selectors.is_empty() {
        problems.push(format!("{what}: no series in {expr}"));
    }
    for (name, matchers) in &refs.selectors {
        let known: Option<&[&str]> = EXPORTED
            .iter()
            .find(|(n, _)| n == name)
            .map(|(_, l)| *l)
            .or_else(|| {
                PROMETHEUS_SERIES
                    .contains(&name.as_str())
                    .then_some(&[][..])
            });
        let Some(labels) = known else {
            problems.push(format!("{what}: `{name}` is not a series tcpq exports"));
            continue;
        };
        labels_here.extend(labels.iter().copied());
        for m in matchers {
            if !labels.contains(&m.as_str()) && !TARGET_LABELS.contains(&m.as_str()) {
                problems.push(format!("{what}: `{name}` has no label `{m}`"));
            }
        }
    }
    for g in &refs.grouping {
        if !labels_here.contains(g.as_str()) {
            problems.push(format!(
                "{what}: groups by `{g}`, which none of its series carries"
            ));
        }
    }
    problems
}

#[test]
fn promql_scanner_finds_names_and_labels() {
    let r = promql_refs(
        r#"histogram_quantile(0.99, sum by (le, listener) (rate(tcpq_accept_wait_seconds_bucket{instance=~"a|b", netns!="1"}[5m] offset 1h))) > 0.5 or on(instance) up == bool 0"#,
    );
    assert_eq!(
        r.selectors,
        [
            (
                "tcpq_accept_wait_seconds_bucket".to_string(),
                vec!["instance".to_string(), "netns".to_string()]
            ),
            ("up".to_string(), vec![])
        ]
    );
    assert_eq!(r.grouping, ["le", "listener", "instance"]);
    assert_eq!(
        grafana_to_promql(r#"rate(x{i=~"$instance",j="${j}"}[$__rate_interval])"#),
        r#"rate(x{i=~".*",j=".*"}[5m])"#
    );
    assert!(!check_expr("t", "sum by (kind) (tcpq_listen_refused_total)").is_empty());
    assert!(!check_expr("t", "tcpq_no_such_metric").is_empty());
    assert!(!check_expr("t", r#"tcpq_events_total{listener="x"}"#).is_empty());
}

#[test]
fn rules_and_dashboard_name_only_exported_series() {
    let mut problems = Vec::new();
    let rules = rule_exprs();
    assert!(rules.len() >= 10, "{rules:?}");
    for (alert, expr) in &rules {
        problems.extend(check_expr(&format!("alert {alert}"), expr));
    }
    let dash = dashboard_exprs();
    assert!(dash.len() >= 15, "{dash:?}");
    for (panel, expr) in &dash {
        problems.extend(check_expr(&format!("panel {panel:?}"), expr));
    }
    assert!(problems.is_empty(), "{}", problems.join("\n"));
    // What the issue asks the dashboard to show.
    let all: String = dash.iter().map(|(_, e)| e.as_str()).collect();
    for needed in [
        "tcpq_listen_refused_total",
        "tcpq_listen_refusals_total",
        "tcpq_accept_wait_seconds_bucket",
        "tcpq_connects_total",
        "tcpq_conntrack_entries",
        "tcpq_process_cpu_seconds_total",
        "tcpq_process_resident_memory_bytes",
        "tcpq_lost_events_total",
    ] {
        assert!(all.contains(needed), "the dashboard shows no {needed}");
    }
    eprintln!(
        "{} alert expressions and {} dashboard expressions name only exported series",
        rules.len(),
        dash.len()
    );
}

#[test]
fn dashboard_panels_are_laid_out_and_typed() {
    let dash: Value = serde_json::from_str(
        &std::fs::read_to_string(deploy_dir().join("grafana/tcpq.json")).unwrap(),
    )
    .unwrap();
    let panels = dash["panels"].as_array().expect("panels");
    let mut ids = BTreeSet::new();
    for p in panels {
        assert!(
            ids.insert(p["id"].as_u64().expect("id")),
            "duplicate id in {p}"
        );
        let g = &p["gridPos"];
        assert!(
            g["x"].as_u64().unwrap() + g["w"].as_u64().unwrap() <= 24,
            "panel wider than the grid: {p}"
        );
        if p["type"] != "row" {
            assert!(!p["targets"].as_array().expect("targets").is_empty(), "{p}");
            assert!(p["title"].as_str().is_some_and(|t| !t.is_empty()));
        }
    }
    assert!(panels.iter().any(|p| p["type"] == "heatmap"));
    assert!(panels.iter().any(|p| p["type"] == "gauge"));
}

#[test]
fn dashboard_promql_parses() {
    let test = "dashboard_promql_parses";
    let Some(promtool) = tool_or_skip(test, "promtool", "prometheus") else {
        return;
    };
    let dir = std::env::temp_dir().join(format!("tcpq-dashboard-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let mut rules = String::from("groups:\n  - name: dashboard\n    rules:\n");
    for (i, (_, expr)) in dashboard_exprs().iter().enumerate() {
        let e = grafana_to_promql(expr);
        rules.push_str(&format!(
            "      - record: dashboard_expr_{i}\n        expr: {}\n",
            serde_json::to_string(&e).unwrap()
        ));
    }
    let file = dir.join("dashboard-rules.yml");
    std::fs::write(&file, &rules).unwrap();
    let out = Command::new(promtool)
        .args(["check", "rules"])
        .arg(&file)
        .output()
        .expect("promtool");
    let _ = std::fs::remove_dir_all(&dir);
    assert!(
        out.status.success(),
        "promtool rejects a dashboard expression:\n{}{}\n{rules}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

#[test]
fn alert_rules_pass_promtool() {
    let test = "alert_rules_pass_promtool";
    let Some(promtool) = tool_or_skip(test, "promtool", "prometheus") else {
        return;
    };
    let dir = deploy_dir().join("prometheus");
    for args in [
        &["check", "rules", "tcpq-rules.yml"][..],
        &["test", "rules", "tcpq-rules.test.yml"][..],
    ] {
        let out = Command::new(&promtool)
            .args(args)
            .current_dir(&dir)
            .output()
            .expect("promtool");
        assert!(
            out.status.success(),
            "promtool {args:?}:\n{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
    }
    // Every alert has a unit test, and a summary.
    let tests = std::fs::read_to_string(dir.join("tcpq-rules.test.yml")).unwrap();
    for (alert, _) in rule_exprs() {
        assert!(
            tests.contains(&format!("alertname: {alert}\n")),
            "no promtool test for {alert}"
        );
    }
    let docs = load_yaml(&dir.join("tcpq-rules.yml"));
    for g in docs[0]["groups"].as_vec().unwrap() {
        for r in g["rules"].as_vec().unwrap() {
            let summary = r["annotations"]["summary"].as_str().unwrap_or("");
            assert!(
                summary.contains(" — "),
                "{:?}: the summary names no fix: {summary}",
                r["alert"]
            );
        }
    }
}
