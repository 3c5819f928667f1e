//! The full-screen view of `tcpq top` (ratatui). Drawing and key handling are pure functions of
//! the frame, its history and the UI state, so they are tested on ratatui's TestBackend.
use ratatui::{
    Frame as TermFrame,
    crossterm::event::{KeyCode, KeyEvent, KeyModifiers},
    layout::{Constraint, Layout, Rect},
    style::{Color, Modifier, Style},
    text::{Line, Span},
    widgets::{Block, Borders, Cell, Clear, Gauge, Paragraph, Row, Sparkline, Table, Wrap},
};

use crate::live::frame::{Frame, History, kinds_text, opt, owner_text, pct};

#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Panel {
    #[default]
    Causes,
    Listeners,
    Outbound,
    Conntrack,
}

impl Panel {
    fn next(self) -> Self {
        match self {
            Panel::Causes => Panel::Listeners,
            Panel::Listeners => Panel::Outbound,
            Panel::Outbound => Panel::Conntrack,
            Panel::Conntrack => Panel::Causes,
        }
    }
}

/// Sort orders offered by `s` (cycled).
pub const SORTS: [&str; 3] = ["impact", "rate", "name"];

#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct UiState {
    pub paused: bool,
    pub panel: Panel,
    pub sort: usize,
    pub filter: String,
    pub editing_filter: bool,
    pub selected: usize,
    pub details: bool,
    pub help: bool,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Action {
    None,
    Quit,
}

/// Applies one key press.
pub fn handle_key(ui: &mut UiState, key: KeyEvent) -> Action {
    if key.modifiers.contains(KeyModifiers::CONTROL) && key.code == KeyCode::Char('c') {
        return Action::Quit;
    }
    if ui.editing_filter {
        match key.code {
            KeyCode::Enter => ui.editing_filter = false,
            KeyCode::Esc => {
                ui.editing_filter = false;
                ui.filter.clear();
            }
            KeyCode::Backspace => {
                ui.filter.pop();
            }
            KeyCode::Char(c) if ui.filter.len() < 64 => ui.filter.push(c),
            _ => {}
        }
        ui.selected = 0;
        return Action::None;
    }
    match key.code {
        KeyCode::Char('q') => return Action::Quit,
        KeyCode::Esc if ui.details || ui.help => {
            ui.details = false;
            ui.help = false;
        }
        KeyCode::Esc => return Action::Quit,
        KeyCode::Char('p') => ui.paused = !ui.paused,
        KeyCode::Char('s') => ui.sort = (ui.sort + 1) % SORTS.len(),
        KeyCode::Char('/') => {
            ui.editing_filter = true;
            ui.filter.clear();
        }
        KeyCode::Tab => {
            ui.panel = ui.panel.next();
            ui.selected = 0;
        }
        KeyCode::Enter => ui.details = !ui.details,
        KeyCode::Char('?') => ui.help = !ui.help,
        KeyCode::Down | KeyCode::Char('j') => ui.selected = ui.selected.saturating_add(1),
        KeyCode::Up | KeyCode::Char('k') => ui.selected = ui.selected.saturating_sub(1),
        _ => {}
    }
    Action::None
}

fn matches(filter: &str, fields: &[&str]) -> bool {
    filter.is_empty() || {
        let f = filter.to_lowercase();
        fields.iter().any(|s| s.to_lowercase().contains(&f))
    }
}

/// Rows of one panel after filter and sort: (cells, detail text).
struct PanelRows {
    header: Vec<&'static str>,
    widths: Vec<Constraint>,
    rows: Vec<(Vec<String>, String)>,
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
                    kinds_text(&l.per_s),
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
                        kinds_text(&l.per_s),
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
                let by = r
                    .failures_by_result
                    .iter()
                    .map(|(k, v)| format!("{k} {v}"))
                    .collect::<Vec<_>>()
                    .join(", ");
                let detail = format!(
                    "{} → {} (netns {}){}\nconnects {:.1}/s, failures {:.1}/s ({}), ports {}/{} used, TIME_WAIT {}, connect p99 {} µs",
                    owner_text(Some(r.pid), Some(&r.process)),
                    r.destination,
                    r.netns,
                    r.cgroup.as_deref().map(|g| format!(", {}", crate::snapshot::container::describe(g))).unwrap_or_default(),
                    r.connects_per_s,
                    r.failures_per_s,
                    if by.is_empty() { "none" } else { &by },
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
                        if by.is_empty() { "-".into() } else { by },
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

fn panel_rows(f: &Frame, ui: &UiState, p: Panel) -> PanelRows {
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

fn table<'a>(title: String, rows: &PanelRows, focused: bool, selected: usize) -> Table<'a> {
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

const HELP: &str = "q quit · p pause · s sort (impact, rate, name) · / filter (enter keeps, esc clears) · tab next panel · ↑↓ select · enter details · ? help";

/// Draws one frame. Never panics on empty data: every list may be empty and the area tiny.
pub fn draw(t: &mut TermFrame, f: &Frame, hist: &History, ui: &UiState) {
    let area = t.area();
    if area.height < 8 || area.width < 40 {
        t.render_widget(Paragraph::new("tcpq top: terminal too small"), area);
        return;
    }
    let [head, causes, listeners, outbound, ct, spark, foot] = Layout::vertical([
        Constraint::Length(3),
        Constraint::Min(4),
        Constraint::Min(4),
        Constraint::Min(4),
        Constraint::Length(3),
        Constraint::Length(3),
        Constraint::Length(1),
    ])
    .areas(area);

    let counters = f
        .counters
        .iter()
        .map(|c| format!("{} {}/s", c.name, c.per_s))
        .collect::<Vec<_>>()
        .join(" · ");
    let lost_style = if f.lost_interval > 0 {
        Style::default().fg(Color::Red).add_modifier(Modifier::BOLD)
    } else {
        Style::default()
    };
    let header = vec![
        Line::from(vec![
            Span::styled("tcpq top", Style::default().add_modifier(Modifier::BOLD)),
            Span::raw(format!(
                "  {} · kernel {} · hooks {}/{} active · {:.0} events/s{} · ",
                f.host,
                f.kernel,
                f.hooks_active,
                f.hooks_total,
                f.events_per_s,
                super::frame::tallied_note(f.tallied_per_s)
            )),
            Span::styled(
                format!("lost {} (+{})", f.lost_total, f.lost_interval),
                lost_style,
            ),
            Span::raw(if ui.paused { "  [PAUSED]" } else { "" }),
        ]),
        Line::from(format!(
            "kernel counters: {}",
            if counters.is_empty() {
                "no change".into()
            } else {
                counters
            }
        )),
        Line::from(if f.hooks_inactive.is_empty() {
            super::frame::families_text(f)
        } else {
            format!(
                "{} · inactive: {}",
                super::frame::families_text(f),
                f.hooks_inactive.join("; ")
            )
        }),
    ];
    t.render_widget(Paragraph::new(header), head);

    let sort = SORTS[ui.sort];
    let filt = if ui.filter.is_empty() && !ui.editing_filter {
        String::new()
    } else {
        format!(
            " filter: {}{}",
            ui.filter,
            if ui.editing_filter { "▏" } else { "" }
        )
    };
    for (p, rect, name) in [
        (Panel::Causes, causes, "Causes now"),
        (Panel::Listeners, listeners, "Listeners"),
        (Panel::Outbound, outbound, "Outbound"),
    ] {
        let rows = panel_rows(f, ui, p);
        let focused = ui.panel == p;
        let title = format!(
            " {name} ({}){} ",
            rows.rows.len(),
            if focused {
                format!(" · sort {sort}{filt}")
            } else {
                String::new()
            }
        );
        if rows.rows.is_empty() && p == Panel::Causes {
            let b = Block::default().borders(Borders::ALL).title(title);
            t.render_widget(Paragraph::new("no cause right now").block(b), rect);
        } else {
            t.render_widget(table(title, &rows, focused, ui.selected), rect);
        }
    }

    draw_conntrack(t, f, ui.panel == Panel::Conntrack, ct);

    let [s1, s2, s3] = Layout::horizontal([
        Constraint::Ratio(1, 3),
        Constraint::Ratio(1, 3),
        Constraint::Ratio(1, 3),
    ])
    .areas(spark);
    for (rect, title, data) in [
        (s1, "refused/s", &hist.refused_per_s),
        (s2, "connect failures/s", &hist.failures_per_s),
        (s3, "conntrack drops/s", &hist.ct_drops_per_s),
    ] {
        let data: Vec<u64> = data.iter().copied().collect();
        let last = data.last().copied().unwrap_or(0);
        t.render_widget(
            Sparkline::default()
                .block(
                    Block::default()
                        .borders(Borders::ALL)
                        .title(format!(" {title} {last} ")),
                )
                .data(&data),
            rect,
        );
    }
    t.render_widget(
        Paragraph::new(format!(
            "{HELP}{}",
            if filt.is_empty() { "" } else { &filt }
        )),
        foot,
    );

    if ui.details {
        let rows = panel_rows(f, ui, ui.panel);
        let text = rows
            .rows
            .get(ui.selected.min(rows.rows.len().saturating_sub(1)))
            .map(|(_, d)| d.clone())
            .unwrap_or_else(|| "nothing selected".into());
        popup(t, area, " details (enter/esc to close) ", &text);
    }
    if ui.help {
        popup(t, area, " help ", &HELP.replace(" · ", "\n"));
    }
}

fn draw_conntrack(t: &mut TermFrame, f: &Frame, focused: bool, rect: Rect) {
    let border = if focused {
        Style::default().fg(Color::Yellow)
    } else {
        Style::default()
    };
    let block = Block::default()
        .borders(Borders::ALL)
        .border_style(border)
        .title(" Conntrack ");
    // The busiest namespace: the most drops, then the fullest table.
    let Some(c) = f.conntrack.iter().max_by(|a, b| {
        a.drops_per_s
            .total_cmp(&b.drops_per_s)
            .then(pct(a.count, a.max).total_cmp(&pct(b.count, b.max)))
    }) else {
        t.render_widget(Paragraph::new("conntrack not in use").block(block), rect);
        return;
    };
    let ratio = (pct(c.count, c.max) / 100.0).clamp(0.0, 1.0);
    t.render_widget(
        Gauge::default()
            .block(block)
            .gauge_style(if ratio > 0.9 {
                Style::default().fg(Color::Red)
            } else {
                Style::default().fg(Color::Green)
            })
            .ratio(ratio)
            .label(format!(
                "netns {} {}/{} · drops {:.1}/s (table full {:.1}/s, kernel stat {}) · top {}",
                c.netns,
                c.count,
                c.max,
                c.drops_per_s,
                c.table_full_per_s,
                c.kernel_rate(),
                c.top_consumer.as_deref().unwrap_or("-")
            )),
        rect,
    );
}

fn popup(t: &mut TermFrame, area: Rect, title: &str, text: &str) {
    let w = area.width.saturating_sub(8).min(100);
    let h = area.height.saturating_sub(4).min(14);
    let rect = Rect {
        x: area.x + (area.width - w) / 2,
        y: area.y + (area.height - h) / 2,
        width: w,
        height: h,
    };
    t.render_widget(Clear, rect);
    t.render_widget(
        Paragraph::new(text.to_string())
            .wrap(Wrap { trim: false })
            .block(
                Block::default()
                    .borders(Borders::ALL)
                    .title(title.to_string()),
            ),
        rect,
    );
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::live::frame::{CauseRow, ConntrackRow, ListenerRow};
    use ratatui::{Terminal, backend::TestBackend, crossterm::event::KeyEventKind};

    fn screen(f: &Frame, hist: &History, ui: &UiState, w: u16, h: u16) -> String {
        let mut term = Terminal::new(TestBackend::new(w, h)).unwrap();
        term.draw(|t| draw(t, f, hist, ui)).unwrap();
        let buf = term.backend().buffer().clone();
        let mut s = String::new();
        for y in 0..buf.area.height {
            for x in 0..buf.area.width {
                s.push_str(buf[(x, y)].symbol());
            }
            s.push('\n');
        }
        s
    }

    fn recorded() -> Frame {
        Frame {
            host: "web1".into(),
            kernel: "6.18.0".into(),
            hooks_active: 17,
            hooks_total: 18,
            events_per_s: 1234.0,
            lost_total: 7,
            lost_interval: 2,
            causes: vec![CauseRow {
                cause: "accept queue overflow".into(),
                place: "0.0.0.0:8080".into(),
                pid: Some(42),
                process: Some("nginx".into()),
                impact_per_s: 512.0,
                evidence: "backlog 16 full".into(),
                fix: vec!["listen 8080 backlog=4096;".into()],
                ..CauseRow::default()
            }],
            listeners: vec![ListenerRow {
                listener: "0.0.0.0:8080".into(),
                pid: Some(42),
                process: Some("nginx".into()),
                queue: Some(17),
                backlog: Some(16),
                refused_per_s: 512.0,
                ..ListenerRow::default()
            }],
            conntrack: vec![ConntrackRow {
                netns: 1,
                count: 190,
                max: 200,
                drops_per_s: 20.0,
                table_full_per_s: 20.0,
                kernel_drops_per_s: Some(20.5),
                top_consumer: Some("127.0.0.1".into()),
            }],
            ..Frame::default()
        }
    }

    #[test]
    fn empty_data_and_tiny_terminals_never_panic() {
        let f = Frame::default();
        let h = History::default();
        for (w, hgt) in [(1, 1), (10, 5), (40, 8), (80, 24), (200, 60)] {
            for panel in [
                Panel::Causes,
                Panel::Listeners,
                Panel::Outbound,
                Panel::Conntrack,
            ] {
                let ui = UiState {
                    panel,
                    details: true,
                    help: true,
                    selected: 5,
                    ..UiState::default()
                };
                let _ = screen(&f, &h, &ui, w, hgt);
            }
        }
        let s = screen(&f, &h, &UiState::default(), 120, 40);
        assert!(s.contains("no cause right now"), "{s}");
        assert!(s.contains("conntrack not in use"), "{s}");
    }

    #[test]
    fn recorded_incident_shows_cause_listener_loss_and_gauge() {
        let f = recorded();
        let mut h = History::default();
        h.record(&f);
        let s = screen(&f, &h, &UiState::default(), 160, 40);
        assert!(s.contains("Causes now (1)"), "{s}");
        assert!(s.contains("accept queue overflow"), "{s}");
        assert!(s.contains("nginx[42]"), "{s}");
        assert!(s.contains("17/16"), "{s}");
        assert!(s.contains("lost 7 (+2)"), "{s}");
        assert!(s.contains("190/200"), "{s}");
        assert!(s.contains("kernel stat 20.5/s"), "{s}");
        assert!(s.contains("refused/s 512"), "{s}");
    }

    #[test]
    fn conntrack_row_without_a_kernel_rate_yet_shows_a_dash() {
        let mut row = recorded().conntrack[0].clone();
        assert!(
            row.describe()
                .contains("table full 20.0/s, kernel stat 20.5/s")
        );
        row.kernel_drops_per_s = None;
        assert!(
            row.describe().contains("kernel stat -"),
            "{}",
            row.describe()
        );
    }

    fn key(c: KeyCode) -> KeyEvent {
        KeyEvent {
            code: c,
            modifiers: KeyModifiers::NONE,
            kind: KeyEventKind::Press,
            state: ratatui::crossterm::event::KeyEventState::NONE,
        }
    }

    #[test]
    fn keys_filter_details_help_and_quit() {
        let f = recorded();
        let h = History::default();
        let mut ui = UiState::default();
        for c in ['/', 'x', 'y', 'z'] {
            handle_key(&mut ui, key(KeyCode::Char(c)));
        }
        handle_key(&mut ui, key(KeyCode::Enter));
        let s = screen(&f, &h, &ui, 160, 40);
        assert!(s.contains("Causes now (0)"), "filter hides the cause: {s}");
        handle_key(&mut ui, key(KeyCode::Char('/')));
        for c in "nginx".chars() {
            handle_key(&mut ui, key(KeyCode::Char(c)));
        }
        handle_key(&mut ui, key(KeyCode::Enter));
        handle_key(&mut ui, key(KeyCode::Enter)); // details
        let s = screen(&f, &h, &ui, 160, 40);
        assert!(s.contains("listen 8080 backlog=4096;"), "{s}");
        assert_eq!(handle_key(&mut ui, key(KeyCode::Esc)), Action::None);
        assert!(!ui.details);
        handle_key(&mut ui, key(KeyCode::Char('?')));
        assert!(screen(&f, &h, &ui, 160, 40).contains("tab next panel"));
        handle_key(&mut ui, key(KeyCode::Char('?')));
        handle_key(&mut ui, key(KeyCode::Tab));
        assert_eq!(ui.panel, Panel::Listeners);
        handle_key(&mut ui, key(KeyCode::Char('s')));
        assert_eq!(SORTS[ui.sort], "rate");
        handle_key(&mut ui, key(KeyCode::Char('p')));
        assert!(screen(&f, &h, &ui, 160, 40).contains("[PAUSED]"));
        assert_eq!(handle_key(&mut ui, key(KeyCode::Char('q'))), Action::Quit);
    }
}
