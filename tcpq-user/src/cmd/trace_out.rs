//! What every `trace` command writes with: its stdout (`TraceOut`: lines that never block, the
//! text header once, a quiet end when the reader has gone) and its summaries' time spans
//! (`Windows`: the whole run, or the window since the last summary).
use std::{
    cell::{Cell, RefCell},
    io::Write as _,
    time::Instant,
};

use anyhow::Result;

use crate::outbox::Lines;

/// A trace command's stdout, shared by its event, tick and summary callbacks.
pub struct TraceOut {
    lines: RefCell<Lines>,
    header: Cell<bool>,
}

impl TraceOut {
    /// NDJSON (`json`) or text lines on stdout.
    pub fn stdout(json: bool) -> Result<Self> {
        Ok(Self {
            lines: RefCell::new(Lines::stdout(json)?),
            header: Cell::new(false),
        })
    }

    /// Writes one line. Once stdout is closed (e.g. `| head`) there is nothing more to say:
    /// tcpq ends at once, exit 0 (the kernel detaches the programs).
    pub fn emit(&self, line: String) {
        let mut o = self.lines.borrow_mut();
        if o.write_all(line.as_bytes())
            .and_then(|_| o.write_all(b"\n"))
            .is_err()
        {
            std::process::exit(0);
        }
    }

    /// Text mode: `header` before the first event line of the run.
    pub fn header_once(&self, header: &str) {
        if !self.header.replace(true) {
            self.emit(header.into());
        }
    }

    /// Hands the lines written so far to the writer (each tick, after each summary). A failure
    /// is the reader gone: the next `emit` ends tcpq.
    pub fn flush(&self) {
        let _ = self.lines.borrow_mut().flush();
    }
}

/// The spans a summary covers: the whole run (the final one) or the window since the last.
pub struct Windows {
    started: Instant,
    window: Cell<Instant>,
}

impl Windows {
    pub fn start() -> Self {
        Self {
            started: Instant::now(),
            window: Cell::new(Instant::now()),
        }
    }

    /// Seconds the summary covers: since the start (`final_run`) or since the last window.
    pub fn seconds(&self, final_run: bool) -> f64 {
        if final_run {
            self.started.elapsed()
        } else {
            self.window.get().elapsed()
        }
        .as_secs_f64()
    }

    /// A new window starts now.
    pub fn next(&self) {
        self.window.set(Instant::now());
    }
}
