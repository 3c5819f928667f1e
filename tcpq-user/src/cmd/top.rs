//! `tcpq top`: the live view. Every `-d` interval the session's aggregates become a frame
//! (causes now, listeners, outbound, conntrack) drawn full screen (ratatui), as plain text
//! (`-b`, or when stdout is not a terminal) or as one NDJSON object per frame (`--json`).
use std::{
    io::{IsTerminal as _, Write as _},
    os::fd::{AsFd as _, AsRawFd as _},
    time::{Duration, Instant},
};

use anyhow::{Context as _, Result};
use ratatui::crossterm::event::{KeyCode, KeyEvent, KeyModifiers};

use crate::{
    cli::{HooksMode, TopArgs},
    event_loop::{self, next_due},
    live::{
        frame::{self, Frame, History},
        producer::Producer,
        tui::{self, Action, UiState},
    },
    stop,
};

pub fn run(args: TopArgs) -> Result<i32> {
    let full_screen = !args.batch && !args.json && std::io::stdout().is_terminal();
    let live = super::live_options(&args.tiers, HooksMode::Auto);
    let mut producer = Producer::start(live)?;
    stop::install();
    stop::watch_terminal();
    if full_screen {
        return run_tui(producer, args.delay);
    }
    eprintln!(
        "tcpq: top: {}; a frame every {:.1} s",
        crate::live::session::describe_tiers(&live),
        args.delay.as_secs_f64()
    );
    // Frames go out through a thread of their own: a reader that stops reading costs dropped
    // frames (counted in the next one written), never collection or a stop.
    let mut out = crate::outbox::Outbox::stdout(FRAMES_QUEUED)?;
    let mut frames = 0u64;
    let mut deadline = Instant::now() + args.delay;
    loop {
        let go_on = producer.collect_until(deadline, |wait| {
            event_loop::sleep(wait);
            true
        });
        let mut frame = producer.tick().frame;
        frame.frames_dropped = out.unreported();
        frame.frames_dropped_total = out.dropped_total();
        let text = if args.json {
            serde_json::to_string(&frame).context("encode frame")?
        } else {
            frame::render_text(&frame)
        };
        // A closed pipe (`tcpq top -b | head`) ends tcpq quietly.
        if out.send(text + "\n") == crate::outbox::Sent::Closed {
            break;
        }
        frames += 1;
        if !go_on || args.iterations.is_some_and(|n| frames >= n) {
            break;
        }
        deadline = next_due(deadline, args.delay, Instant::now());
    }
    // `-n N` ends with every frame written (a slow reader waited for); a stop does not wait.
    out.finish_unless_stopped();
    Ok(0)
}

/// Frames waiting for a slow reader besides the one being written; later ones are dropped.
const FRAMES_QUEUED: usize = 2;

fn run_tui(mut producer: Producer, delay: Duration) -> Result<i32> {
    let mut keys = Keys::open();
    // Raw mode, the alternate screen and a panic hook that restores them; a terminal that is
    // already gone is an error here, not a panic (ratatui::init).
    let mut terminal = match ratatui::try_init() {
        Ok(t) => t,
        Err(e) => {
            let _ = ratatui::try_restore(); // raw mode may be on already
            return Err(e).context("set up the terminal");
        }
    };
    let mut gone = false;
    let result = (|| -> Result<()> {
        let mut ui = UiState::default();
        let mut shown = Frame::default();
        let mut history = History::default();
        gone = !draw_view(&mut terminal, &shown, &history, &ui)?;
        let mut quit = false;
        let mut deadline = Instant::now() + delay;
        while !quit && !gone && !stop::requested() {
            let mut failed = None;
            producer.collect_until(deadline, |wait| {
                let pressed = match keys.wait(wait) {
                    Input::Keys(k) => k,
                    Input::Nothing => return true,
                    Input::Gone => {
                        gone = true;
                        return false;
                    }
                };
                if pressed
                    .into_iter()
                    .any(|k| tui::handle_key(&mut ui, k) == Action::Quit)
                {
                    quit = true;
                    return false;
                }
                match draw_view(&mut terminal, &shown, &history, &ui) {
                    Ok(drawn) => {
                        gone = !drawn;
                        drawn
                    }
                    Err(e) => {
                        failed = Some(e);
                        false
                    }
                }
            });
            if let Some(e) = failed {
                return Err(e);
            }
            if quit || gone || stop::requested() {
                break;
            }
            let frame = producer.tick().frame;
            if !ui.paused {
                shown = frame;
                history = producer.history.clone();
            }
            gone = !draw_view(&mut terminal, &shown, &history, &ui)?;
            deadline = next_due(deadline, delay, Instant::now());
        }
        Ok(())
    })();
    // Nothing to restore, nor anyone to tell, once the terminal is gone.
    if let Err(e) = ratatui::try_restore()
        && !gone
        && !stop::requested()
    {
        let _ = writeln!(std::io::stderr(), "tcpq: restore the terminal: {e}");
    }
    result.map(|_| 0)
}

/// Draws the view; false when the terminal is gone (EIO: it hung up) or a stop was requested.
fn draw_view(
    terminal: &mut ratatui::DefaultTerminal,
    shown: &Frame,
    history: &History,
    ui: &UiState,
) -> Result<bool> {
    match terminal.draw(|t| tui::draw(t, shown, history, ui)) {
        Ok(_) => Ok(true),
        Err(e) if e.raw_os_error() == Some(libc::EIO) || stop::requested() => Ok(false),
        Err(e) => Err(e).context("draw the screen"),
    }
}

/// What the keyboard gave within one wait.
#[derive(Debug, PartialEq, Eq)]
enum Input {
    Keys(Vec<KeyEvent>),
    /// The wait ended (timeout, a signal) with no key.
    Nothing,
    /// The terminal hung up (EOF, EIO, POLLHUP): quit.
    Gone,
}

/// The keyboard, read by tcpq itself rather than by crossterm's event reader: crossterm 0.28
/// re-reads the terminal until EWOULDBLOCK, and a hung-up terminal answers EOF at once, every
/// time — `tcpq top` spun there at 100 % CPU, deaf to signals, once its tmux session was killed.
struct Keys {
    /// The terminal (stdin's, else /dev/tty, as crossterm chooses); None: no keyboard.
    tty: Option<std::fs::File>,
}

impl Keys {
    fn open() -> Self {
        let stdin = std::io::stdin();
        let tty = if stdin.is_terminal() {
            stdin
                .as_fd()
                .try_clone_to_owned()
                .ok()
                .map(std::fs::File::from)
        } else {
            std::fs::File::open("/dev/tty").ok()
        };
        Self { tty }
    }

    /// Blocks up to `wait` for keys; returns early on a signal or when the terminal hangs up.
    fn wait(&mut self, wait: Duration) -> Input {
        let mut fds = [
            libc::pollfd {
                // poll ignores a negative descriptor: without a keyboard this only waits.
                fd: self.tty.as_ref().map_or(-1, |f| f.as_raw_fd()),
                events: libc::POLLIN,
                revents: 0,
            },
            // The screen, for its hangup only (no events asked: POLLHUP / POLLERR).
            libc::pollfd {
                fd: libc::STDOUT_FILENO,
                events: 0,
                revents: 0,
            },
        ];
        // Rounded up: a 0 ms timeout would return at once, again and again, until the deadline.
        let ms = wait.as_micros().div_ceil(1000).min(i32::MAX as u128) as i32;
        // SAFETY: `fds` is a live array of `fds.len()` pollfd structs for the whole call.
        let n = unsafe { libc::poll(fds.as_mut_ptr(), fds.len() as libc::nfds_t, ms) };
        if n < 0 {
            return match std::io::Error::last_os_error().kind() {
                std::io::ErrorKind::Interrupted => Input::Nothing,
                // poll itself failing would fail again at once: end rather than spin.
                _ => Input::Gone,
            };
        }
        let lost = libc::POLLHUP | libc::POLLERR | libc::POLLNVAL;
        if fds.iter().any(|p| p.revents & lost != 0) {
            return Input::Gone;
        }
        let Some(tty) = self
            .tty
            .as_mut()
            .filter(|_| fds[0].revents & libc::POLLIN != 0)
        else {
            return Input::Nothing;
        };
        let mut buf = [0u8; 256];
        match std::io::Read::read(tty, &mut buf) {
            Ok(0) => Input::Gone,
            Ok(n) => Input::Keys(parse_keys(&buf[..n])),
            Err(e)
                if matches!(
                    e.kind(),
                    std::io::ErrorKind::Interrupted | std::io::ErrorKind::WouldBlock
                ) =>
            {
                Input::Nothing
            }
            Err(_) => Input::Gone,
        }
    }
}

/// The keys in what a raw-mode terminal sent: characters, Enter, Tab, Backspace, Esc, Ctrl-C
/// and the arrow keys (CSI / SS3 sequences; any other sequence is skipped whole).
fn parse_keys(bytes: &[u8]) -> Vec<KeyEvent> {
    let text = String::from_utf8_lossy(bytes);
    let mut chars = text.chars().peekable();
    let mut keys = Vec::new();
    while let Some(c) = chars.next() {
        let (code, modifiers) = match c {
            '\x1b' if matches!(chars.peek(), Some('[' | 'O')) => {
                chars.next();
                // Parameters and intermediates up to the final byte (@ to ~).
                match chars.find(|c| ('@'..='~').contains(c)) {
                    Some('A') => (KeyCode::Up, KeyModifiers::NONE),
                    Some('B') => (KeyCode::Down, KeyModifiers::NONE),
                    _ => continue,
                }
            }
            '\x1b' => (KeyCode::Esc, KeyModifiers::NONE),
            '\r' | '\n' => (KeyCode::Enter, KeyModifiers::NONE),
            '\t' => (KeyCode::Tab, KeyModifiers::NONE),
            '\x7f' | '\x08' => (KeyCode::Backspace, KeyModifiers::NONE),
            '\x03' => (KeyCode::Char('c'), KeyModifiers::CONTROL),
            c if c.is_control() => continue,
            c => (KeyCode::Char(c), KeyModifiers::NONE),
        };
        keys.push(KeyEvent::new(code, modifiers));
    }
    keys
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key(code: KeyCode) -> KeyEvent {
        KeyEvent::new(code, KeyModifiers::NONE)
    }

    #[test]
    fn raw_terminal_bytes_become_keys() {
        assert_eq!(
            parse_keys(b"q/ab\x7f\r\t?"),
            vec![
                key(KeyCode::Char('q')),
                key(KeyCode::Char('/')),
                key(KeyCode::Char('a')),
                key(KeyCode::Char('b')),
                key(KeyCode::Backspace),
                key(KeyCode::Enter),
                key(KeyCode::Tab),
                key(KeyCode::Char('?')),
            ]
        );
        assert_eq!(
            parse_keys(b"\x1b[A\x1bOB\x1b[1;5C\x1b"),
            vec![key(KeyCode::Up), key(KeyCode::Down), key(KeyCode::Esc)]
        );
        assert_eq!(
            parse_keys(b"\x03"),
            vec![KeyEvent::new(KeyCode::Char('c'), KeyModifiers::CONTROL)]
        );
        assert_eq!(parse_keys("é".as_bytes()), vec![key(KeyCode::Char('é'))]);
    }
}
