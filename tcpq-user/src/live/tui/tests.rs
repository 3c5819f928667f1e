//! The full-screen view's tests on ratatui's TestBackend: recorded frames and keys in, the
//! screen they must give.
use super::*;
use crate::live::frame::{CauseRow, ConntrackRow, Frame, History, ListenerRow};
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
