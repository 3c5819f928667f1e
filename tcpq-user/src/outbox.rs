//! Output that never blocks collection. A reader that stops reading — `tcpq top --json | sleep
//! 1000`, a terminal stopped with Ctrl-S — blocks write(2) on stdout; done by the loop that
//! drains the ring buffers, that stalled collection, filled the rings and left a SIGTERM
//! unanswered. Here a thread of its own writes; the loop hands it whole chunks (a frame, a
//! second's lines) through a bounded queue and never waits: a chunk that does not fit is
//! dropped and counted, and the next one that gets through says so (`Outbox::unreported`;
//! `Lines` adds a line of its own). When tcpq leaves, what is queued gets a bounded time to be
//! written (`FINISH_WITHIN`), not more.
use std::{
    io::Write,
    sync::{
        Arc,
        atomic::{AtomicBool, Ordering},
        mpsc::{self, Receiver, SyncSender, TrySendError},
    },
    time::Duration,
};

use anyhow::{Result, anyhow};

/// What tcpq waits, when it leaves, for queued output to be written.
pub const FINISH_WITHIN: Duration = Duration::from_millis(200);

/// What became of a chunk.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Sent {
    Queued,
    /// The queue was full: the reader has not taken what came before.
    Dropped,
    /// The reader is gone (a closed pipe): nothing more will be written.
    Closed,
}

pub struct Outbox {
    tx: Option<SyncSender<String>>,
    closed: Arc<AtomicBool>,
    /// The writer's end: it sends once everything queued is written (or writing failed).
    written: Receiver<()>,
    unreported: u64,
    dropped_total: u64,
}

impl Outbox {
    /// Chunks to stdout; `capacity` may wait besides the one being written.
    pub fn stdout(capacity: usize) -> Result<Self> {
        Self::new(capacity, || std::io::stdout().lock())
    }

    /// Chunks to the writer `open` returns on the writing thread (once per chunk).
    pub fn new<W: Write>(capacity: usize, open: impl Fn() -> W + Send + 'static) -> Result<Self> {
        let (tx, rx) = mpsc::sync_channel::<String>(capacity);
        let (done_tx, written) = mpsc::channel();
        let closed = Arc::new(AtomicBool::new(false));
        let flag = Arc::clone(&closed);
        std::thread::Builder::new()
            .name("tcpq-output".into())
            .spawn(move || {
                for chunk in rx {
                    let mut out = open();
                    if out
                        .write_all(chunk.as_bytes())
                        .and_then(|_| out.flush())
                        .is_err()
                    {
                        flag.store(true, Ordering::SeqCst);
                        break;
                    }
                }
                let _ = done_tx.send(());
            })
            .map_err(|e| {
                anyhow!(
                    "start the output thread: {e} (raise the process or thread limit, ulimit -u)"
                )
            })?;
        Ok(Self {
            tx: Some(tx),
            closed,
            written,
            unreported: 0,
            dropped_total: 0,
        })
    }

    /// Hands `chunk` to the writer without waiting.
    pub fn send(&mut self, chunk: String) -> Sent {
        if self.closed() {
            return Sent::Closed;
        }
        let Some(tx) = &self.tx else {
            return Sent::Closed;
        };
        match tx.try_send(chunk) {
            Ok(()) => {
                self.unreported = 0;
                Sent::Queued
            }
            Err(TrySendError::Full(_)) => {
                self.unreported += 1;
                self.dropped_total += 1;
                Sent::Dropped
            }
            Err(TrySendError::Disconnected(_)) => Sent::Closed,
        }
    }

    /// Chunks dropped since the last one that got through: what the next should report.
    pub fn unreported(&self) -> u64 {
        self.unreported
    }

    pub fn dropped_total(&self) -> u64 {
        self.dropped_total
    }

    /// Writing failed (the reader closed its end).
    pub fn closed(&self) -> bool {
        self.closed.load(Ordering::SeqCst)
    }

    /// Closes the queue and waits up to `within` for what it holds to be written; false when
    /// the reader did not take it in time (it is left behind).
    pub fn finish(&mut self, within: Duration) -> bool {
        if self.tx.take().is_none() {
            return true;
        }
        self.written.recv_timeout(within).is_ok()
    }

    /// Closes the queue and waits for what it holds to be written, however slow the reader,
    /// unless a stop is requested (checked every 100 ms): then at most FINISH_WITHIN more.
    /// For output that is the command's result (diagnose's report, top's last frame of `-n`).
    pub fn finish_unless_stopped(&mut self) -> bool {
        if self.tx.take().is_none() {
            return true;
        }
        loop {
            if crate::stop::requested() {
                return self.written.recv_timeout(FINISH_WITHIN).is_ok();
            }
            match self.written.recv_timeout(Duration::from_millis(100)) {
                Err(mpsc::RecvTimeoutError::Timeout) => {}
                Ok(()) => return true,
                Err(mpsc::RecvTimeoutError::Disconnected) => return false,
            }
        }
    }
}

impl Drop for Outbox {
    fn drop(&mut self) {
        self.finish(FINISH_WITHIN);
    }
}

/// Line output of the tracing commands, as a `Write` that never blocks: lines gather in a
/// buffer, `flush` (each second, and whenever the buffer passes `CHUNK_BYTES`) hands them to the
/// writer as one chunk. A chunk dropped because the reader stalled is counted in lines; the next
/// chunk that gets through starts with a line saying how many (`dropped_notice`). Once the
/// reader is gone, writes fail (as a closed stdout would).
pub struct Lines {
    out: Outbox,
    buf: String,
    json: bool,
    dropped_lines: u64,
}

/// A second's lines at most before they are handed over anyway (bounded memory).
const CHUNK_BYTES: usize = 64 * 1024;
/// Chunks waiting besides the one being written.
const LINE_CHUNKS: usize = 4;

/// The line that says `n` lines were dropped.
pub fn dropped_notice(n: u64, json: bool) -> String {
    if json {
        format!("{{\"event\":\"output_stalled\",\"lines_dropped\":{n}}}\n")
    } else {
        format!("tcpq: {n} lines dropped: output stalled (the reader did not keep up)\n")
    }
}

impl Lines {
    pub fn stdout(json: bool) -> Result<Self> {
        Ok(Self {
            out: Outbox::stdout(LINE_CHUNKS)?,
            buf: String::new(),
            json,
            dropped_lines: 0,
        })
    }

    fn hand_over(&mut self) -> std::io::Result<()> {
        if self.buf.is_empty() {
            return self.check();
        }
        let lines = self.buf.matches('\n').count() as u64;
        let mut chunk = std::mem::take(&mut self.buf);
        if self.dropped_lines > 0 {
            chunk.insert_str(0, &dropped_notice(self.dropped_lines, self.json));
        }
        match self.out.send(chunk) {
            Sent::Queued => self.dropped_lines = 0,
            Sent::Dropped => self.dropped_lines += lines,
            Sent::Closed => {}
        }
        self.check()
    }

    fn check(&self) -> std::io::Result<()> {
        if self.out.closed() {
            Err(std::io::ErrorKind::BrokenPipe.into())
        } else {
            Ok(())
        }
    }
}

impl Write for Lines {
    fn write(&mut self, data: &[u8]) -> std::io::Result<usize> {
        self.check()?;
        self.buf.push_str(&String::from_utf8_lossy(data));
        if self.buf.len() >= CHUNK_BYTES {
            self.hand_over()?;
        }
        Ok(data.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        self.hand_over()
    }
}

impl Drop for Lines {
    fn drop(&mut self) {
        let _ = self.hand_over();
        self.out.finish(FINISH_WITHIN);
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Mutex;

    use super::*;

    /// A writer that blocks each write until the test lets it through, and keeps what it wrote.
    struct Gate {
        started: mpsc::Sender<()>,
        go: Arc<Mutex<Receiver<()>>>,
        got: Arc<Mutex<Vec<String>>>,
    }

    impl Write for Gate {
        fn write(&mut self, data: &[u8]) -> std::io::Result<usize> {
            let _ = self.started.send(());
            let go = self.go.lock().map_err(|_| std::io::ErrorKind::Other)?;
            go.recv().map_err(|_| std::io::ErrorKind::BrokenPipe)?;
            if let Ok(mut g) = self.got.lock() {
                g.push(String::from_utf8_lossy(data).into_owned());
            }
            Ok(data.len())
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }

    /// An outbox (one chunk may wait) writing through a `Gate`: it, "a write started", the gate's
    /// key (one write per send) and what got written.
    #[allow(clippy::type_complexity)]
    fn gated() -> (
        Outbox,
        Receiver<()>,
        mpsc::Sender<()>,
        Arc<Mutex<Vec<String>>>,
    ) {
        let (started_tx, started) = mpsc::channel();
        let (go_tx, go_rx) = mpsc::channel();
        let go = Arc::new(Mutex::new(go_rx));
        let got = Arc::new(Mutex::new(Vec::new()));
        let o = Arc::clone(&got);
        let out = Outbox::new(1, move || Gate {
            started: started_tx.clone(),
            go: Arc::clone(&go),
            got: Arc::clone(&o),
        })
        .unwrap();
        (out, started, go_tx, got)
    }

    #[test]
    fn a_stalled_reader_costs_dropped_chunks_never_a_wait() {
        let (mut out, started, go_tx, got) = gated();
        assert_eq!(out.send("a".into()), Sent::Queued);
        started.recv_timeout(Duration::from_secs(5)).unwrap(); // "a" is being written
        assert_eq!(out.send("b".into()), Sent::Queued, "one waits");
        let t = std::time::Instant::now();
        assert_eq!(out.send("c".into()), Sent::Dropped);
        assert_eq!(out.send("d".into()), Sent::Dropped);
        assert!(t.elapsed() < Duration::from_millis(100), "never waits");
        assert_eq!((out.unreported(), out.dropped_total()), (2, 2));
        // The reader resumes: "a" and "b" go out, and the next chunk gets in.
        go_tx.send(()).unwrap();
        go_tx.send(()).unwrap();
        started.recv_timeout(Duration::from_secs(5)).unwrap(); // "b" is being written
        assert_eq!(out.send("e".into()), Sent::Queued);
        assert_eq!((out.unreported(), out.dropped_total()), (0, 2));
        go_tx.send(()).unwrap();
        assert!(out.finish(Duration::from_secs(5)), "the rest is written");
        assert_eq!(*got.lock().unwrap(), vec!["a", "b", "e"]);
    }

    #[test]
    fn leaving_waits_a_bounded_time_for_a_reader_that_never_reads() {
        let (mut out, started, _go_tx, _) = gated();
        out.send("a".into());
        started.recv_timeout(Duration::from_secs(5)).unwrap();
        let t = std::time::Instant::now();
        assert!(!out.finish(Duration::from_millis(50)));
        assert!(t.elapsed() < Duration::from_millis(500));
    }

    #[test]
    fn a_result_waits_for_a_slow_reader() {
        let (mut out, started, go_tx, got) = gated();
        out.send("report".into());
        started.recv_timeout(Duration::from_secs(5)).unwrap();
        std::thread::spawn(move || {
            std::thread::sleep(Duration::from_millis(300));
            let _ = go_tx.send(());
        });
        assert!(
            out.finish_unless_stopped(),
            "written once the reader took it"
        );
        assert_eq!(*got.lock().unwrap(), vec!["report"]);
    }

    #[test]
    fn a_gone_reader_closes_the_outbox() {
        struct Gone;
        impl Write for Gone {
            fn write(&mut self, _: &[u8]) -> std::io::Result<usize> {
                Err(std::io::ErrorKind::BrokenPipe.into())
            }
            fn flush(&mut self) -> std::io::Result<()> {
                Ok(())
            }
        }
        let mut out = Outbox::new(1, || Gone).unwrap();
        out.send("a".into());
        assert!(out.finish(Duration::from_secs(5)));
        assert!(out.closed());
        assert_eq!(out.send("b".into()), Sent::Closed);
    }

    #[test]
    fn the_dropped_lines_notice() {
        assert_eq!(
            dropped_notice(3, true),
            "{\"event\":\"output_stalled\",\"lines_dropped\":3}\n"
        );
        assert!(dropped_notice(3, false).starts_with("tcpq: 3 lines dropped: output stalled"));
    }
}
