//! The rows of each panel after filter and sort, and the table they are drawn as.
use ratatui::{
    layout::Constraint,
    style::{Color, Modifier, Style},
    widgets::{Block, Borders, Cell, Row, Table},
};

use super::{Panel, SORTS, UiState};
use crate::live::frame::{Frame, opt, owner_text, rates_text};

fn matches(filter: &str, fields: &[&str]) -> bool {
    filter.is_empty() || {
        let f = filter.to_lowercase();
        fields.iter().any(|s| s.to_lowercase().contains(&f))
    }
}

/// Rows of one panel after filter and sort: (cells, detail text).
pub(super) struct PanelRows {
    header: Vec<&'static str>,
    widths: Vec<Constraint>,
    pub(super) rows: Vec<(Vec<String>, String)>,
}

fn causes_rows(f: &Frame, ui: &UiState) -> PanelRows {
    let mut v: Vec<_> = f
        .causes
        .iter()
        .filter(|c| {
            matches(
                &ui.filter,
                &[&c.cause, &c.place, c.process.as_deref().unwrap_or("")],
            )
        })
        .collect();
    if SORTS[ui.sort] == "name" {
        v.sort_by(|a, b| a.cause.cmp(&b.cause).then(a.place.cmp(&b.place)));
    }
    PanelRows {
        header: vec!["CAUSE", "WHERE", "PROCESS", "IMPACT/s", "FIX"],
        widths: vec![
            Constraint::Length(26),
            Constraint::Length(28),
            Constraint::Length(18),
            Constraint::Length(9),
            Constraint::Min(20),
        ],
        rows: v
            .into_iter()
            .map(|c| {
                let detail = format!(
                    "{} at {} ({})\n{}\n{}\nfix:\n  {}",
                    c.cause,
                    c.place,
                    owner_text(c.pid, c.process.as_deref()),
                    c.cgroup
                        .as_deref()
                        .map(crate::snapshot::container::describe)
                        .unwrap_or_default(),
                    c.evidence,
                    c.fix.join("\n  ")
                );
                (
                    vec![
                        c.cause.clone(),
                        c.place.clone(),
                        owner_text(c.pid, c.process.as_deref()),
                        format!("{:.1}", c.impact_per_s),
                        c.fix.first().cloned().unwrap_or_default(),
                    ],
                    detail,
                )
            })
            .collect(),
    }
}

fn listener_rows(f: &Frame, ui: &UiState) -> PanelRows {
    let mut v: Vec<_> = f
        .listeners
        .iter()
        .filter(|l| {
            matches(
                &ui.filter,
                &[&l.listener, l.process.as_deref().unwrap_or("")],
            )
        })
        .collect();
    match SORTS[ui.sort] {
        "rate" => v.sort_by(|a, b| b.accepts_per_s.total_cmp(&a.accepts_per_s)),
        "name" => v.sort_by(|a, b| a.listener.cmp(&b.listener)),
        _ => {} // already by refusals
    }
    PanelRows {
        header: vec![
            "LISTENER", "PROCESS", "QUEUE", "REFUSED/s", "BY KIND/s", "ACCEPT/s", "WAITp99", "IDLE/ALL",
        ],
        widths: vec![
            Constraint::Length(22),
            Constraint::Length(18),
            Constraint::Length(9),
            Constraint::Length(9),
            Constraint::Length(26),
            Constraint::Length(9),
            Constraint::Length(9),
            Constraint::Length(8),
        ],
        rows: v
            .into_iter()
            .map(|l| {
                let detail = format!(
                    "listener {} (netns {})\nprocess {}{}\nqueue {}/{}, refused {:.1}/s ({}), accepts {:.1}/s, wait p99 {} µs, idle acceptors {} of {}",
                    l.listener,
                    l.netns,
                    owner_text(l.pid, l.process.as_deref()),
                    l.cgroup.as_deref().map(|g| format!(", {}", crate::snapshot::container::describe(g))).unwrap_or_default(),
                    opt(l.queue),
                    opt(l.backlog),
                    l.refused_per_s,
                    rates_text(&l.per_s),
                    l.accepts_per_s,
                    opt(l.accept_wait_p99_us),
                    opt(l.idle_acceptors),
                    opt(l.acceptors)
                );
                (
                    vec![
                        l.listener.clone(),
                        owner_text(l.pid, l.process.as_deref()),
                        format!("{}/{}", opt(l.queue), opt(l.backlog)),
                        format!("{:.1}", l.refused_per_s),
                        rates_text(&l.per_s),
                        format!("{:.1}", l.accepts_per_s),
                        opt(l.accept_wait_p99_us.map(|u| format!("{u}µs"))),
                        format!("{}/{}", opt(l.idle_acceptors), opt(l.acceptors)),
                    ],
                    detail,
                )
            })
            .collect(),
    }
}

fn outbound_rows(f: &Frame, ui: &UiState) -> PanelRows {
    let mut v: Vec<_> = f
        .outbound
        .iter()
        .filter(|r| matches(&ui.filter, &[&r.process, &r.destination]))
        .collect();
    match SORTS[ui.sort] {
        "rate" => v.sort_by(|a, b| b.connects_per_s.total_cmp(&a.connects_per_s)),
        "name" => v.sort_by(|a, b| {
            a.process
                .cmp(&b.process)
                .then(a.destination.cmp(&b.destination))
        }),
        _ => {}
    }
    PanelRows {
        header: vec![
            "PROCESS", "DESTINATION", "CONN/s", "FAIL/s", "BY RESULT/s", "PORTS", "TIME_WAIT", "p99",
        ],
        widths: vec![
            Constraint::Length(18),
            Constraint::Length(22),
            Constraint::Length(9),
            Constraint::Length(9),
            Constraint::Length(24),
            Constraint::Length(11),
            Constraint::Length(9),
            Constraint::Length(9),
        ],
        rows: v
            .into_iter()
            .map(|r| {
                let by = rates_text(&r.failures_by_result);
                let detail = format!(
                    "{} → {} (netns {}){}\nconnects {:.1}/s, failures {:.1}/s ({}), ports {}/{} used, TIME_WAIT {}, connect p99 {} µs",
                    owner_text(Some(r.pid), Some(&r.process)),
                    r.destination,
                    r.netns,
                    r.cgroup.as_deref().map(|g| format!(", {}", crate::snapshot::container::describe(g))).unwrap_or_default(),
                    r.connects_per_s,
                    r.failures_per_s,
                    if r.failures_by_result.is_empty() { "none" } else { &by },
                    opt(r.ports_used),
                    opt(r.ports_usable),
                    opt(r.time_wait),
                    opt(r.connect_p99_us)
                );
                (
                    vec![
                        owner_text(Some(r.pid), Some(&r.process)),
                        r.destination.clone(),
                        format!("{:.1}", r.connects_per_s),
                        format!("{:.1}", r.failures_per_s),
                        by,
                        format!("{}/{}", opt(r.ports_used), opt(r.ports_usable)),
                        opt(r.time_wait),
                        opt(r.connect_p99_us.map(|u| format!("{u}µs"))),
                    ],
                    detail,
                )
            })
            .collect(),
    }
}

pub(super) fn panel_rows(f: &Frame, ui: &UiState, p: Panel) -> PanelRows {
    match p {
        Panel::Causes => causes_rows(f, ui),
        Panel::Listeners => listener_rows(f, ui),
        Panel::Outbound => outbound_rows(f, ui),
        Panel::Conntrack => PanelRows {
            header: vec![],
            widths: vec![],
            rows: f.conntrack.iter().map(|c| (vec![], c.describe())).collect(),
        },
    }
}

pub(super) fn table<'a>(
    title: String,
    rows: &PanelRows,
    focused: bool,
    selected: usize,
) -> Table<'a> {
    let header = Row::new(rows.header.iter().map(|h| Cell::from(*h)))
        .style(Style::default().add_modifier(Modifier::BOLD));
    let body = rows.rows.iter().enumerate().map(|(i, (cells, _))| {
        let style = if focused && i == selected.min(rows.rows.len().saturating_sub(1)) {
            Style::default().add_modifier(Modifier::REVERSED)
        } else {
            Style::default()
        };
        Row::new(cells.iter().map(|c| Cell::from(c.clone()))).style(style)
    });
    let border = if focused {
        Style::default().fg(Color::Yellow)
    } else {
        Style::default()
    };
    Table::new(body, rows.widths.clone()).header(header).block(
        Block::default()
            .borders(Borders::ALL)
            .border_style(border)
            .title(title),
    )
}
