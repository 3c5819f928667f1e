//! Drawing one frame: header, gauges and sparklines, the panels, details and help.
use ratatui::{
    Frame as TermFrame,
    layout::{Constraint, Layout, Rect},
    style::{Color, Modifier, Style},
    text::{Line, Span},
    widgets::{Block, Borders, Clear, Gauge, Paragraph, Sparkline, Wrap},
};

use super::{
    Panel, SORTS, UiState,
    rows::{panel_rows, table},
};
use crate::live::frame::{Frame, History, counters_text, pct};

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
                crate::live::frame::tallied_note(f.tallied_per_s)
            )),
            Span::styled(
                format!("lost {} (+{})", f.lost_total, f.lost_interval),
                lost_style,
            ),
            Span::raw(if ui.paused { "  [PAUSED]" } else { "" }),
        ]),
        Line::from(format!(
            "kernel counters: {}",
            counters_text(&f.counters, " · ")
        )),
        Line::from(if f.hooks_inactive.is_empty() {
            crate::live::frame::families_text(f)
        } else {
            format!(
                "{} · inactive: {}",
                crate::live::frame::families_text(f),
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
