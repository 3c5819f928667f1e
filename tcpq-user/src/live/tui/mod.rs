//! The full-screen view of `tcpq top` (ratatui). Drawing and key handling are pure functions of
//! the frame, its history and the UI state, so they are tested on ratatui's TestBackend.
mod draw;
mod rows;
#[cfg(test)]
mod tests;

use ratatui::crossterm::event::{KeyCode, KeyEvent, KeyModifiers};

pub use draw::draw;

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
