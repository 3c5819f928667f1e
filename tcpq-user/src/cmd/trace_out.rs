//! What every `trace` command writes with: its stdout (`TraceOut`: lines that never block, the
//! text header once, a quiet end when the reader has gone), its line budget (`Budget`: which
//! events get a line, the aggregates due each second) and its summaries' time spans (`Windows`:
//! the whole run, or the window since the last summary).
use std::{
    cell::{Cell, RefCell},
    hash::Hash,
    io::Write as _,
    time::Instant,
};

use anyhow::Result;

use crate::{
    aggregate::{Folded, LineBudget},
    diagnosis::Finding,
    outbox::Lines,
    render::Clock,
};

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

    /// A summary's causes, each with its fixes, under the summary line.
    pub fn causes(&self, findings: Vec<Finding>) {
        for f in findings {
            self.emit(format!("    cause {}: {}", f.cause, f.text));
            for fix in f.fix {
                self.emit(format!("      fix: {fix}"));
            }
        }
    }

    /// Hands the lines written so far to the writer (each tick, after each summary). A failure
    /// is the reader gone: the next `emit` ends tcpq.
    pub fn flush(&self) {
        let _ = self.lines.borrow_mut().flush();
    }
}

/// Aggregate lines as `LineBudget` returns them: (second, key, class, events).
pub type Aggregates<K, C> = Folded<K, C>;

/// A trace command's `LineBudget` (`--lines-per-sec` per key), shared by its callbacks. Each
/// call returns the aggregate lines now due, for the command to print.
pub struct Budget<K: Hash + Eq + Clone + Ord, C: Hash + Eq + Clone + Ord> {
    inner: RefCell<LineBudget<K, C>>,
}

impl<K: Hash + Eq + Clone + Ord, C: Hash + Eq + Clone + Ord> Budget<K, C> {
    pub fn new(per_second: u32) -> Self {
        Self {
            inner: RefCell::new(LineBudget::new(per_second)),
        }
    }

    /// An event at `ts_ns` (monotonic): the aggregates of the seconds it ends, and whether the
    /// event gets its own line.
    pub fn admit(&self, ts_ns: u64, key: &K, class: &C) -> (Aggregates<K, C>, bool) {
        self.inner
            .borrow_mut()
            .admit(ts_ns / 1_000_000_000, key, class)
    }

    /// Each tick: the aggregates of the seconds over by now.
    pub fn due(&self) -> Aggregates<K, C> {
        self.inner
            .borrow_mut()
            .flush_until(Clock::now_mono_ns() / 1_000_000_000)
    }

    /// At a summary: the final one takes every aggregate left, the others none.
    pub fn at_summary(&self, final_run: bool) -> Aggregates<K, C> {
        if final_run {
            self.inner.borrow_mut().flush_all()
        } else {
            Vec::new()
        }
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
