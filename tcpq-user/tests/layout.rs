//! The module graph of tcpq-user, read from its sources: imports go one way (ARCHITECTURE.md:
//! `cmd` → `live` → families → shared modules and snapshots → `kernel`), a family never imports
//! another, nothing imports `cmd`, no subcommand imports another, and no two modules import each
//! other in a circle. Unit tests (`#[cfg(test)]` modules) may import anything.
use std::{
    collections::{BTreeMap, BTreeSet},
    path::{Path, PathBuf},
};

/// Layers, top to bottom: a module may import its own layer's modules or lower ones.
const LAYERS: &[&[&str]] = &[
    &["main", "bin", "cmd", "cli"],
    &["live"],
    &["family", "limit"],
    &[
        "diagnosis",
        "fixes",
        "aggregate",
        "render",
        "wire",
        "outbox",
        "event_loop",
        "stop",
        // lib.rs: an error as one line.
        "one_line",
    ],
    &["snapshot"],
    &["kernel"],
];

/// What every subcommand may share (cmd/mod.rs names the modules; `live_options` is its own).
const CMD_PLUMBING: &[&str] = &[
    "live_options",
    "ring",
    "trace_out",
    "filter",
    "connect_session",
    "metrics_http",
];

fn layer(top: &str) -> Option<usize> {
    LAYERS.iter().position(|l| l.contains(&top))
}

/// Every `.rs` file below `dir`.
fn sources(dir: &Path, out: &mut Vec<PathBuf>) {
    for entry in std::fs::read_dir(dir).expect("read the source folder") {
        let path = entry.expect("a directory entry").path();
        if path.is_dir() {
            sources(&path, out);
        } else if path.extension().is_some_and(|e| e == "rs") {
            out.push(path);
        }
    }
}

/// The module path of a source file: `family/listen/mod.rs` → [family, listen].
fn module_of(src: &Path, file: &Path) -> Vec<String> {
    let rel = file.strip_prefix(src).expect("a file below src");
    let mut parts: Vec<String> = rel
        .iter()
        .map(|p| p.to_string_lossy().trim_end_matches(".rs").to_string())
        .collect();
    if parts.last().is_some_and(|p| p == "mod" || p == "lib") {
        parts.pop();
    }
    parts
}

/// The code of a file without its unit-test modules.
fn without_tests(text: &str) -> &str {
    text.find("#[cfg(test)]").map_or(text, |i| &text[..i])
}

/// The paths a `use` tree at the start of `s` names, each as its segments; `prefix` is what
/// leads to it.
fn use_tree(s: &str, prefix: &[String], out: &mut Vec<Vec<String>>) -> usize {
    let mut path = prefix.to_vec();
    let mut i = 0;
    let bytes = s.as_bytes();
    let mut word = String::new();
    while i < bytes.len() {
        let c = bytes[i] as char;
        match c {
            '{' => {
                i += 1;
                loop {
                    i += use_tree(&s[i..], &path, out);
                    match bytes.get(i).map(|b| *b as char) {
                        Some(',') => i += 1,
                        Some('}') => {
                            i += 1;
                            break;
                        }
                        _ => return i,
                    }
                    // A trailing comma before the brace.
                    let rest = &s[i..];
                    let skip = rest.len() - rest.trim_start().len();
                    if rest.trim_start().starts_with('}') {
                        i += skip + 1;
                        break;
                    }
                }
                return i;
            }
            ',' | '}' | ';' => break,
            ':' => {
                if !word.is_empty() {
                    path.push(std::mem::take(&mut word));
                }
                i += 1;
            }
            c if c.is_alphanumeric() || c == '_' => {
                word.push(c);
                i += 1;
            }
            _ => {
                // Whitespace, `as` renames and `self` are all inside the path's last word.
                if !word.is_empty() && s[i..].trim_start().starts_with("as ") {
                    path.push(std::mem::take(&mut word));
                    let end = s[i..].find([',', '}', ';']).map_or(s.len(), |e| i + e);
                    out.push(path);
                    return end;
                }
                i += 1;
            }
        }
    }
    if !word.is_empty() && word != "self" {
        path.push(word);
    }
    out.push(path);
    i
}

/// The crate modules `module`'s code imports (as paths from the crate root, `super` resolved):
/// `use` trees and inline `crate::…`/`super::…` paths.
fn imports(module: &[String], code: &str) -> Vec<Vec<String>> {
    let mut found = Vec::new();
    // `use` statements: at a line's start (after `pub`/`pub(…)`), up to their `;`.
    let mut rest = code;
    while let Some(at) = rest.find("use ") {
        let line_start = rest[..at].rfind('\n').map_or(0, |n| n + 1);
        let lead = rest[line_start..at].trim();
        let statement =
            lead.is_empty() || lead == "pub" || (lead.starts_with("pub(") && lead.ends_with(')'));
        let tail = &rest[at + 4..];
        let end = tail.find(';').unwrap_or(tail.len());
        if statement && tail[..end].is_ascii() {
            let mut tree = Vec::new();
            use_tree(&tail[..end], &[], &mut tree);
            found.extend(tree);
        }
        rest = &rest[at + 4..];
    }
    for key in ["crate::", "super::"] {
        for (at, _) in code.match_indices(key) {
            let rest = &code[at..];
            let end = rest
                .find(|c: char| !(c.is_alphanumeric() || c == '_' || c == ':'))
                .unwrap_or(rest.len());
            found.push(
                rest[..end]
                    .split("::")
                    .filter(|s| !s.is_empty())
                    .map(str::to_string)
                    .collect(),
            );
        }
    }
    found
        .into_iter()
        .filter_map(|path| resolve(module, &path))
        .collect()
}

/// `path` as seen from `module`, from the crate root; None for another crate's path.
fn resolve(module: &[String], path: &[String]) -> Option<Vec<String>> {
    let first = path.first()?;
    if first == "crate" {
        return Some(path[1..].to_vec());
    }
    if first == "super" {
        let ups = path.iter().take_while(|p| *p == "super").count();
        let base = module.len().checked_sub(ups)?;
        let mut full = module[..base].to_vec();
        full.extend_from_slice(&path[ups..]);
        return Some(full);
    }
    if first == "self" {
        let mut full = module.to_vec();
        full.extend_from_slice(&path[1..]);
        return Some(full);
    }
    None
}

/// Where a module sits for the rules: `family::listen`, `cmd::top`, `live` (the first two
/// segments for the folders whose children are peers, else the first).
fn unit(path: &[String]) -> Option<String> {
    let top = path.first()?;
    match (top.as_str(), path.get(1)) {
        ("family" | "cmd", Some(sub)) => Some(format!("{top}::{sub}")),
        _ => Some(top.clone()),
    }
}

struct Graph {
    /// unit → (imported unit → the file that imports it).
    edges: BTreeMap<String, BTreeMap<String, String>>,
}

fn graph() -> Graph {
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
    let mut files = Vec::new();
    sources(&src, &mut files);
    let mut edges: BTreeMap<String, BTreeMap<String, String>> = BTreeMap::new();
    for file in files {
        let module = module_of(&src, &file);
        // The fuzz module is a test harness of decode (cfg(test) at its mod line).
        if module.first().is_some_and(|m| m == "fuzz") || module.is_empty() {
            continue;
        }
        let text = std::fs::read_to_string(&file).expect("read a source file");
        let Some(from) = unit(&module) else { continue };
        for path in imports(&module, without_tests(&text)) {
            let Some(to) = unit(&path) else { continue };
            if to != from {
                let shown = file
                    .strip_prefix(&src)
                    .unwrap_or(&file)
                    .display()
                    .to_string();
                edges
                    .entry(from.clone())
                    .or_default()
                    .entry(to)
                    .or_insert(shown);
            }
        }
    }
    Graph { edges }
}

fn top(unit: &str) -> &str {
    unit.split("::").next().unwrap_or(unit)
}

#[test]
fn imports_go_down_the_layers() {
    let g = graph();
    let mut wrong = Vec::new();
    for (from, tos) in &g.edges {
        for (to, file) in tos {
            let (Some(a), Some(b)) = (layer(top(from)), layer(top(to))) else {
                wrong.push(format!(
                    "{file}: {from} → {to}: a module the LAYERS table lacks"
                ));
                continue;
            };
            if b < a {
                wrong.push(format!("{file}: {from} → {to} imports upwards"));
            }
        }
    }
    assert!(wrong.is_empty(), "{}", wrong.join("\n"));
}

#[test]
fn families_and_subcommands_never_import_a_peer() {
    let g = graph();
    let mut wrong = Vec::new();
    for (from, tos) in &g.edges {
        for (to, file) in tos {
            let peers = from.contains("::") && top(from) == top(to) && to.contains("::");
            let plumbing = CMD_PLUMBING.iter().any(|p| to == &format!("cmd::{p}"));
            if peers && !plumbing {
                wrong.push(format!("{file}: {from} imports its peer {to}"));
            }
        }
    }
    assert!(wrong.is_empty(), "{}", wrong.join("\n"));
}

#[test]
fn no_module_imports_itself_in_a_circle() {
    let g = graph();
    // Depth-first search for a back edge; reports the first circle found.
    fn visit(
        g: &Graph,
        node: &str,
        stack: &mut Vec<String>,
        done: &mut BTreeSet<String>,
    ) -> Option<Vec<String>> {
        if let Some(at) = stack.iter().position(|n| n == node) {
            let mut circle = stack[at..].to_vec();
            circle.push(node.to_string());
            return Some(circle);
        }
        if done.contains(node) {
            return None;
        }
        stack.push(node.to_string());
        for to in g.edges.get(node).into_iter().flat_map(|t| t.keys()) {
            if let Some(c) = visit(g, to, stack, done) {
                return Some(c);
            }
        }
        stack.pop();
        done.insert(node.to_string());
        None
    }
    let mut done = BTreeSet::new();
    for node in g.edges.keys() {
        if let Some(circle) = visit(&g, node, &mut Vec::new(), &mut done) {
            panic!(
                "modules import each other in a circle: {}",
                circle.join(" → ")
            );
        }
    }
}

#[test]
fn the_reader_sees_nested_use_trees_and_super() {
    let m: Vec<String> = ["family", "listen", "render"].map(String::from).to_vec();
    let code = "use crate::{a::{b, c::D}, e as f};\nuse super::decode::X;\nfn g() { crate::kernel::ktime_ns(); }";
    let got: BTreeSet<String> = imports(&m, code).iter().map(|p| p.join("::")).collect();
    for want in [
        "a::b",
        "a::c::D",
        "e",
        "family::listen::decode::X",
        "kernel::ktime_ns",
    ] {
        assert!(got.contains(want), "{want} in {got:?}");
    }
    assert_eq!(
        unit(&["family".into(), "listen".into(), "x".into()]).unwrap(),
        "family::listen"
    );
}
