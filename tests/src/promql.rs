//! What the alert rules and the dashboard reference: a small PromQL scanner and Grafana's
//! variables replaced.

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
