//! `tcpq top`: the live view. Every `-d` interval the session's aggregates become a frame
//! (causes now, listeners, outbound, conntrack) drawn full screen (ratatui), as plain text
//! (`-b`, or when stdout is not a terminal) or as one NDJSON object per frame (`--json`).
use std::{
    io::{IsTerminal as _, Write as _},
    time::{Duration, Instant},
};

use anyhow::{Context as _, Result};
use ratatui::crossterm::event::{self, Event, KeyEventKind};

use crate::{
    live::{
        causes::{Cause, find_causes, socket_causes},
        frame::{self, Frame, History},
        gather,
        session::{Aggregates, Session},
        tui::{self, Action, UiState},
    },
    stop,
};

#[derive(Debug, Clone)]
pub struct TopArgs {
    pub delay: Duration,
    pub batch: bool,
    pub json: bool,
    pub iterations: Option<u64>,
}

/// Socket-leak causes need a walk of every process's descriptors: refreshed this often.
const SOCKET_SCAN_EVERY: Duration = Duration::from_secs(10);

/// One interval's results.
pub struct Tick {
    pub frame: Frame,
    pub causes: Vec<Cause>,
    pub agg: Aggregates,
}

/// Produces one frame per interval from a live session.
pub struct Producer {
    pub session: Session,
    last_tick: Instant,
    last_lost: u64,
    socket_causes: Vec<Cause>,
    last_socket_scan: Option<Instant>,
    pub history: History,
}

impl Producer {
    pub fn start() -> Result<Self> {
        let session = Session::start()?;
        let now = Instant::now();
        Ok(Self {
            session,
            last_tick: now,
            last_lost: 0,
            socket_causes: Vec::new(),
            last_socket_scan: None,
            history: History::default(),
        })
    }

    /// Ends the interval and returns its frame, causes and aggregates.
    pub fn tick(&mut self) -> Tick {
        self.session.drain();
        self.session.sample_acceptors();
        let secs = self.last_tick.elapsed().as_secs_f64().max(0.001);
        self.last_tick = Instant::now();
        let agg = self.session.take();
        let host = self.session.host;
        let mut causes = find_causes(&agg, &mut self.session.dir, host, secs, false);
        if self
            .last_socket_scan
            .is_none_or(|t| t.elapsed() >= SOCKET_SCAN_EVERY)
        {
            self.socket_causes = socket_causes();
            self.last_socket_scan = Some(Instant::now());
        }
        // Socket leaks are states, not rates: their impact is the number of sockets.
        causes.extend(self.socket_causes.iter().cloned().map(|mut c| {
            c.finding.impact = (c.finding.impact as f64 * secs) as u64;
            c
        }));
        causes.sort_by_key(|c| std::cmp::Reverse(c.finding.impact));
        let lost = self.session.lost().total();
        let header = gather::header(&self.session, lost, lost.saturating_sub(self.last_lost));
        self.last_lost = lost;
        let snaps = gather::snapshots(&mut self.session, &agg, &causes, secs);
        let frame = frame::build(header, &agg, &causes, &snaps, secs);
        self.history.record(&frame);
        Tick { frame, causes, agg }
    }

    /// Drains the rings until `deadline` (or a stop), calling `between` every ~50 ms.
    pub fn collect_until(
        &mut self,
        deadline: Instant,
        mut between: impl FnMut(Duration) -> bool,
    ) -> bool {
        while Instant::now() < deadline {
            if stop::requested() {
                return false;
            }
            self.session.drain();
            let wait = deadline
                .saturating_duration_since(Instant::now())
                .min(Duration::from_millis(50));
            if !between(wait) {
                return false;
            }
        }
        true
    }
}

pub fn run(args: TopArgs) -> Result<i32> {
    let full_screen = !args.batch && !args.json && std::io::stdout().is_terminal();
    let mut producer = Producer::start()?;
    stop::install();
    if full_screen {
        return run_tui(producer, args.delay);
    }
    eprintln!(
        "tcpq: top: every hook family attached; a frame every {:.1} s",
        args.delay.as_secs_f64()
    );
    let mut out = std::io::stdout().lock();
    let mut frames = 0u64;
    loop {
        let deadline = Instant::now() + args.delay;
        let go_on = producer.collect_until(deadline, |wait| {
            std::thread::sleep(wait);
            true
        });
        let frame = producer.tick().frame;
        let written = if args.json {
            serde_json::to_string(&frame)
                .map(|s| writeln!(out, "{s}"))
                .context("encode frame")?
        } else {
            writeln!(out, "{}", frame::render_text(&frame))
        };
        // A closed pipe (`tcpq top -b | head`) ends tcpq quietly.
        if written.and_then(|_| out.flush()).is_err() {
            break;
        }
        frames += 1;
        if !go_on || args.iterations.is_some_and(|n| frames >= n) {
            break;
        }
    }
    Ok(0)
}

fn run_tui(mut producer: Producer, delay: Duration) -> Result<i32> {
    // ratatui::init() enters raw mode and the alternate screen and installs a panic hook that
    // restores the terminal; restore() below covers normal exit and errors.
    let mut terminal = ratatui::init();
    let result = (|| -> Result<()> {
        let mut ui = UiState::default();
        let mut shown = Frame::default();
        let mut history = History::default();
        let mut quit = false;
        terminal
            .draw(|t| tui::draw(t, &shown, &history, &ui))
            .context("draw the screen")?;
        while !quit && !stop::requested() {
            let deadline = Instant::now() + delay;
            let mut redraw = false;
            producer.collect_until(deadline, |wait| {
                if let Ok(true) = event::poll(wait)
                    && let Ok(Event::Key(k)) = event::read()
                    && k.kind == KeyEventKind::Press
                {
                    if tui::handle_key(&mut ui, k) == Action::Quit {
                        quit = true;
                        return false;
                    }
                    redraw = true;
                }
                if redraw {
                    redraw = false;
                    let _ = terminal.draw(|t| tui::draw(t, &shown, &history, &ui));
                }
                true
            });
            if quit {
                break;
            }
            let frame = producer.tick().frame;
            if !ui.paused {
                shown = frame;
                history = producer.history.clone();
            }
            terminal
                .draw(|t| tui::draw(t, &shown, &history, &ui))
                .context("draw the screen")?;
        }
        Ok(())
    })();
    ratatui::restore();
    result.map(|_| 0)
}
