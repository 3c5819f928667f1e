//! `tcpq export`'s /metrics server, on a thread of its own: it serves the last encoding the
//! collection loop (`cmd::export`) swapped in.
//!
//! A small HTTP/1.1 server (GET and HEAD, one request per connection,
//! `Connection: close`) on a single-threaded tokio runtime. tiny_http 0.12, used before, cannot
//! be bounded: it starts a thread per connection without limit, sets no timeout on the sockets it
//! accepts (a client that never finishes its request, or never reads the answer, holds its
//! thread forever; its API gives no way to reach those sockets) and buffers a request line or
//! header of any length. Here every bound is explicit (see `LIMITS`), and the collection loop
//! only ever swaps a pointer under a lock the HTTP side holds just long enough to clone it.
use std::{
    io,
    net::{Shutdown, SocketAddr},
    sync::{Arc, Mutex},
    time::Duration,
};

use anyhow::{Result, anyhow};
use socket2::{Domain, Protocol, SockRef, Socket, Type};
use tokio::{
    net::{TcpListener, TcpStream},
    sync::{Semaphore, watch},
    time::timeout,
};

mod http;
use http::{Head, HeadParser, Status, What, render};

/// What the /metrics server allows each client, whatever it does.
#[derive(Debug, Clone, Copy)]
pub(super) struct Limits {
    /// Connections served at once; later ones wait in the kernel's accept queue (`BACKLOG`).
    connections: usize,
    /// From accept to the end of the request head.
    head: Duration,
    /// To write the whole answer.
    write: Duration,
    /// After the answer, at most this long and `linger_bytes` are read and discarded until the
    /// client closes, so that what it sent beyond the head (a body, a second request) does not
    /// turn the close into a reset that destroys the answer before the client read it.
    linger: Duration,
    linger_bytes: usize,
    /// Request line plus headers.
    head_bytes: usize,
}

/// Why these bounds: a Prometheus deployment has a handful of scrapers (an HA pair, a
/// federation, someone's curl); each sends its ~250-byte request in its first segment and reads
/// the answer at once, so it needs its slot for microseconds.
/// - 64 connections: 100 simultaneous scrapers are all answered within milliseconds, while
///   tcpq never holds more than 64 sockets and 64 × 8 KiB of request buffers (~0.5 MiB) whatever
///   the clients do. Connections beyond the cap wait in the kernel's accept queue, which costs
///   tcpq nothing and is bounded by `BACKLOG` (and net.core.somaxconn); beyond that the kernel
///   drops SYNs and clients retry. Only more than 64 hostile connections at once can make a
///   scraper wait, and then for at most one slot's lifetime (below).
/// - 5 s to send the request head and 5 s to take the answer, 1 s of lingering: a slot is free
///   again at most 11 s after accept (6 s for a client that sends nothing), below Prometheus's
///   default 10 s scrape timeout for the usual case, while a real scraper on a loaded machine is
///   never near either bound. The deadlines cover the whole head and the whole answer (not one
///   read or write each), so a client trickling a byte a second is cut off like a silent one.
/// - 8 KiB of request head: what nginx (large_client_header_buffers) and Apache
///   (LimitRequestFieldSize) allow by default; a scraper's request with a bearer token is well
///   below it. Longer request lines get 414, longer heads 431.
/// - Pages: each answer holds a reference to the page of its moment, for at most `write`; a new
///   page appears once per interval, so at most `write / interval + 2` pages are alive, however
///   many clients there are.
pub(super) const LIMITS: Limits = Limits {
    connections: 64,
    head: Duration::from_secs(5),
    write: Duration::from_secs(5),
    linger: Duration::from_secs(1),
    linger_bytes: 64 * 1024,
    head_bytes: 8 * 1024,
};

/// listen(2) backlog of the /metrics socket (the kernel caps it at net.core.somaxconn).
const BACKLOG: i32 = 1024;

/// The page served on /metrics: replaced whole by the collection loop, its reference cloned by
/// each answer (never the text itself).
pub(super) type Page = Arc<Mutex<Arc<str>>>;

/// The listening socket, with a backlog of our choosing (std's `TcpListener::bind` picks its
/// own) and SO_REUSEADDR like std's, so a restarted exporter binds while old connections linger.
pub(super) fn bind(addr: SocketAddr) -> io::Result<std::net::TcpListener> {
    let socket = Socket::new(Domain::for_address(addr), Type::STREAM, Some(Protocol::TCP))?;
    socket.set_reuse_address(true)?;
    socket.bind(&addr.into())?;
    socket.listen(BACKLOG)?;
    socket.set_nonblocking(true)?;
    Ok(socket.into())
}

/// Starts the server on a thread of its own; it stops when the returned sender is dropped.
pub(super) fn start_http(
    listener: std::net::TcpListener,
    page: Page,
    limits: Limits,
) -> Result<watch::Sender<bool>> {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_io()
        .enable_time()
        .build()
        .map_err(|e| {
            anyhow!("start the /metrics server: {e} (raise the open-file limit, ulimit -n)")
        })?;
    let listener = {
        let _context = rt.enter();
        TcpListener::from_std(listener)
    }
    .map_err(|e| {
        anyhow!("watch the /metrics socket: {e} (raise the open-file limit, ulimit -n)")
    })?;
    let (stop_tx, stop_rx) = watch::channel(false);
    std::thread::Builder::new()
        .name("tcpq-http".into())
        .spawn(move || rt.block_on(serve(listener, page, limits, stop_rx)))
        .map_err(|e| {
            anyhow!("start the /metrics thread: {e} (raise the process or thread limit, ulimit -u)")
        })?;
    Ok(stop_tx)
}

async fn serve(listener: TcpListener, page: Page, limits: Limits, mut stop: watch::Receiver<bool>) {
    let slots = Arc::new(Semaphore::new(limits.connections));
    loop {
        // A free slot first: while all are taken, new connections wait in the kernel.
        let slot = tokio::select! {
            s = Arc::clone(&slots).acquire_owned() => match s {
                Ok(s) => s,
                Err(_) => return,
            },
            _ = stop.changed() => return,
        };
        let accepted = tokio::select! {
            a = listener.accept() => a,
            _ = stop.changed() => return,
        };
        let stream = match accepted {
            Ok((stream, _)) => stream,
            Err(e) => {
                // EMFILE, ENFILE, ENOBUFS, ECONNABORTED: pass, without spinning on them.
                log::warn!(
                    "accept a /metrics connection: {e} (raise the open-file limit if it repeats)"
                );
                tokio::time::sleep(Duration::from_millis(100)).await;
                continue;
            }
        };
        let page = Arc::clone(&page);
        tokio::spawn(async move {
            connection(stream, &page, limits).await;
            drop(slot);
        });
    }
}

/// One connection, from accept to close, in at most `head + write + linger`.
async fn connection(stream: TcpStream, page: &Mutex<Arc<str>>, limits: Limits) {
    // Head and body go out as two writes: without this the second waits for a delayed ACK.
    let _ = stream.set_nodelay(true);
    let mut buf = vec![0u8; limits.head_bytes];
    let head = timeout(limits.head, read_head(&stream, &mut buf))
        .await
        .unwrap_or(Head::Answer {
            what: What::Error(Status::RequestTimeout, "the request did not arrive in time"),
            head_only: false,
        });
    let Head::Answer { what, head_only } = head else {
        return;
    };
    let (head, body) = render(what, page);
    let written = timeout(limits.write, async {
        write_all(&stream, head.as_bytes()).await?;
        if !head_only {
            write_all(&stream, body.as_bytes()).await?;
        }
        io::Result::Ok(())
    })
    .await;
    drop(body);
    let sock = SockRef::from(&stream);
    if !matches!(written, Ok(Ok(()))) {
        // Not taken in time (or the client left): reset, so the kernel does not keep
        // retrying the rest of the answer to a client that does not read.
        let _ = sock.set_linger(Some(Duration::ZERO));
        return;
    }
    // Lingering close: FIN after the answer, then read what the client still sends (bounded)
    // until it closes, so unread input does not make our close a reset.
    let _ = sock.shutdown(Shutdown::Write);
    let _ = timeout(limits.linger, drain(&stream, &mut buf, limits.linger_bytes)).await;
}

/// Reads until the request head is complete, rejected, or the client leaves.
async fn read_head(stream: &TcpStream, buf: &mut [u8]) -> Head {
    let mut parser = HeadParser::default();
    let mut len = 0;
    loop {
        if len == buf.len() {
            return parser.too_long();
        }
        let n = match read_some(stream, &mut buf[len..]).await {
            Ok(n) => n,
            Err(_) => return Head::Closed,
        };
        if n == 0 {
            return parser.ended(len);
        }
        len += n;
        if let Some(head) = parser.feed(&buf[..len], len - n) {
            return head;
        }
    }
}

async fn read_some(stream: &TcpStream, buf: &mut [u8]) -> io::Result<usize> {
    loop {
        stream.readable().await?;
        match stream.try_read(buf) {
            Err(e)
                if matches!(
                    e.kind(),
                    io::ErrorKind::WouldBlock | io::ErrorKind::Interrupted
                ) => {}
            r => return r,
        }
    }
}

/// `try_write` goes through std's `TcpStream::write`, i.e. send(2) with MSG_NOSIGNAL: a client
/// gone away is an error here, never a SIGPIPE (whose default disposition tcpq restores).
async fn write_all(stream: &TcpStream, mut buf: &[u8]) -> io::Result<()> {
    while !buf.is_empty() {
        stream.writable().await?;
        match stream.try_write(buf) {
            Ok(0) => return Err(io::ErrorKind::WriteZero.into()),
            Ok(n) => buf = &buf[n..],
            Err(e)
                if matches!(
                    e.kind(),
                    io::ErrorKind::WouldBlock | io::ErrorKind::Interrupted
                ) => {}
            Err(e) => return Err(e),
        }
    }
    Ok(())
}

async fn drain(stream: &TcpStream, buf: &mut [u8], mut budget: usize) {
    while budget > 0 {
        match read_some(stream, buf).await {
            Ok(0) | Err(_) => return,
            Ok(n) => budget = budget.saturating_sub(n),
        }
    }
}

#[cfg(test)]
mod tests {
    use std::{
        io::{Read as _, Write as _},
        time::Instant,
    };

    use super::*;

    fn server(page: &str, limits: Limits) -> (SocketAddr, watch::Sender<bool>) {
        let listener = bind("127.0.0.1:0".parse().unwrap()).unwrap();
        let addr = listener.local_addr().unwrap();
        let page: Page = Arc::new(Mutex::new(Arc::from(page)));
        (addr, start_http(listener, page, limits).unwrap())
    }

    fn get(addr: SocketAddr) -> String {
        let mut s = std::net::TcpStream::connect(addr).unwrap();
        s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
        s.write_all(b"GET /metrics HTTP/1.1\r\nHost: x\r\n\r\n")
            .unwrap();
        let mut text = String::new();
        s.read_to_string(&mut text).unwrap();
        text
    }

    #[test]
    fn a_client_that_does_not_read_is_cut_off_after_the_write_bound() {
        // One slot, and a page far larger than the socket buffers: the first client holds the
        // slot until its write deadline, then the second one is answered.
        let limits = Limits {
            connections: 1,
            head: Duration::from_millis(300),
            write: Duration::from_millis(300),
            linger: Duration::from_millis(100),
            ..LIMITS
        };
        let page = "x".repeat(32 << 20);
        let (addr, _stop) = server(&page, limits);
        let mut stuck = std::net::TcpStream::connect(addr).unwrap();
        stuck.write_all(b"GET /metrics HTTP/1.1\r\n\r\n").unwrap();
        std::thread::sleep(Duration::from_millis(50));
        let t = Instant::now();
        let text = get(addr);
        assert!(text.starts_with("HTTP/1.1 200 OK\r\n"), "{}", &text[..40]);
        assert!(text.ends_with(&page[..100]));
        assert!(t.elapsed() < Duration::from_secs(3), "{:?}", t.elapsed());
        // The stuck client was reset (its answer cut short).
        stuck
            .set_read_timeout(Some(Duration::from_secs(5)))
            .unwrap();
        let mut got = Vec::new();
        let r = stuck.read_to_end(&mut got);
        assert!(r.is_err() || got.len() < page.len(), "{r:?} {}", got.len());
    }

    #[test]
    fn a_request_that_never_ends_gets_408_after_the_head_bound() {
        let limits = Limits {
            head: Duration::from_millis(300),
            ..LIMITS
        };
        let (addr, _stop) = server("# EOF\n", limits);
        let mut s = std::net::TcpStream::connect(addr).unwrap();
        s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
        s.write_all(b"GET /metrics HTTP/1.1\r\nHost:").unwrap();
        let t = Instant::now();
        let mut text = String::new();
        s.read_to_string(&mut text).unwrap();
        assert!(text.starts_with("HTTP/1.1 408 "), "{text}");
        let took = t.elapsed();
        assert!(
            took >= Duration::from_millis(250) && took < Duration::from_secs(2),
            "{took:?}"
        );
        let text = get(addr);
        assert!(text.contains("Content-Length: 6\r\n") && text.ends_with("\r\n\r\n# EOF\n"));
    }
}
