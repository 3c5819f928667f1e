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

const OPENMETRICS: &str = "application/openmetrics-text; version=1.0.0; charset=utf-8";
const TEXT: &str = "text/plain; charset=utf-8";

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

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Status {
    Ok,
    BadRequest,
    NotFound,
    MethodNotAllowed,
    RequestTimeout,
    ContentTooLarge,
    UriTooLong,
    HeadersTooLarge,
    VersionNotSupported,
}

impl Status {
    fn line(self) -> &'static str {
        match self {
            Status::Ok => "200 OK",
            Status::BadRequest => "400 Bad Request",
            Status::NotFound => "404 Not Found",
            Status::MethodNotAllowed => "405 Method Not Allowed",
            Status::RequestTimeout => "408 Request Timeout",
            Status::ContentTooLarge => "413 Content Too Large",
            Status::UriTooLong => "414 URI Too Long",
            Status::HeadersTooLarge => "431 Request Header Fields Too Large",
            Status::VersionNotSupported => "505 HTTP Version Not Supported",
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum What {
    Metrics,
    Index,
    Error(Status, &'static str),
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Head {
    /// The client left before sending anything worth an answer.
    Closed,
    Answer {
        what: What,
        head_only: bool,
    },
}

fn error(status: Status, why: &'static str) -> Head {
    Head::Answer {
        what: What::Error(status, why),
        head_only: false,
    }
}

/// The response head and body of an answer.
fn render(what: What, page: &Mutex<Arc<str>>) -> (String, Arc<str>) {
    let (status, content_type, body, allow) = match what {
        What::Metrics => {
            let body = Arc::clone(&page.lock().unwrap_or_else(|p| p.into_inner()));
            (Status::Ok, OPENMETRICS, body, false)
        }
        What::Index => (
            Status::Ok,
            TEXT,
            Arc::from("tcpq exporter: see /metrics\n"),
            false,
        ),
        What::Error(status, why) => (
            status,
            TEXT,
            Arc::from(format!("tcpq exporter: {why}\n")),
            status == Status::MethodNotAllowed,
        ),
    };
    let head = format!(
        "HTTP/1.1 {}\r\nContent-Type: {content_type}\r\nContent-Length: {}\r\n{}Connection: close\r\n\r\n",
        status.line(),
        body.len(),
        if allow { "Allow: GET, HEAD\r\n" } else { "" },
    );
    (head, body)
}

/// RFC 9110 token characters (methods, header names).
fn is_tchar(b: u8) -> bool {
    b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b)
}

fn trim_cr(line: &[u8]) -> &[u8] {
    line.strip_suffix(b"\r").unwrap_or(line)
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Method {
    Get,
    Head,
    Other,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Target {
    Metrics,
    Index,
    Other,
}

/// The request head, parsed as it arrives: each byte is looked at once, each line when it
/// ends, so a client trickling its head costs linear time. Nothing of it is kept but the
/// method, the target and whether a body follows.
#[derive(Debug, Default)]
struct HeadParser {
    /// Where the request line starts (empty lines before it are allowed, RFC 9112 2.2).
    start: usize,
    /// Where the line being read starts, once the request line is done.
    line_start: Option<usize>,
    request: Option<(Method, Target)>,
    body: bool,
}

impl HeadParser {
    /// Looks at `buf[from..]`, the bytes just read; `Some` once the answer is decided.
    fn feed(&mut self, buf: &[u8], from: usize) -> Option<Head> {
        for (i, &b) in buf.iter().enumerate().skip(from) {
            let Some(line_start) = self.line_start else {
                if i == self.start && (b == b'\r' || b == b'\n') {
                    self.start = i + 1;
                } else if b == b'\n' {
                    match request_line(trim_cr(&buf[self.start..i])) {
                        Ok(r) => self.request = Some(r),
                        Err(head) => return Some(head),
                    }
                    self.line_start = Some(i + 1);
                } else if b != b'\r' && !(0x20..0x7f).contains(&b) {
                    // Control or non-ASCII bytes: not HTTP (a TLS hello, binary garbage).
                    return Some(error(Status::BadRequest, "the request line is not HTTP"));
                }
                continue;
            };
            if b == b'\n' {
                let line = trim_cr(&buf[line_start..i]);
                if line.is_empty() {
                    return Some(self.decide());
                }
                if let Err(head) = self.header(line) {
                    return Some(head);
                }
                self.line_start = Some(i + 1);
            } else if (b < 0x20 && b != b'\t' && b != b'\r') || b == 0x7f {
                return Some(error(Status::BadRequest, "a header holds control bytes"));
            }
        }
        None
    }

    fn header(&mut self, line: &[u8]) -> Result<(), Head> {
        let bad = || error(Status::BadRequest, "a header is malformed");
        let colon = line.iter().position(|&b| b == b':').ok_or_else(bad)?;
        let (name, value) = (&line[..colon], &line[colon + 1..]);
        // Also refuses obsolete line folding (a line starting with a space).
        if name.is_empty() || !name.iter().all(|&b| is_tchar(b)) {
            return Err(bad());
        }
        let value = value.trim_ascii();
        if name.eq_ignore_ascii_case(b"content-length") {
            let length = std::str::from_utf8(value)
                .ok()
                .filter(|v| !v.is_empty() && v.bytes().all(|b| b.is_ascii_digit()))
                .and_then(|v| v.parse::<u64>().ok())
                .ok_or_else(|| error(Status::BadRequest, "Content-Length is not a number"))?;
            self.body |= length > 0;
        } else if name.eq_ignore_ascii_case(b"transfer-encoding") {
            self.body = true;
        }
        Ok(())
    }

    fn decide(&self) -> Head {
        let Some((method, target)) = self.request else {
            return error(Status::BadRequest, "no request line");
        };
        let head_only = method == Method::Head;
        let what = match (method, target) {
            (Method::Other, _) => {
                What::Error(Status::MethodNotAllowed, "only GET and HEAD are served")
            }
            _ if self.body => What::Error(Status::ContentTooLarge, "requests take no body here"),
            (_, Target::Metrics) => What::Metrics,
            (_, Target::Index) => What::Index,
            (_, Target::Other) => What::Error(
                Status::NotFound,
                "no such page: the metrics are on /metrics",
            ),
        };
        Head::Answer { what, head_only }
    }

    /// The buffer is full and the head is not over.
    fn too_long(&self) -> Head {
        if self.line_start.is_none() {
            error(Status::UriTooLong, "the request line is too long")
        } else {
            error(Status::HeadersTooLarge, "the request headers are too long")
        }
    }

    /// The client closed its side after `len` bytes, before the head was over.
    fn ended(&self, len: usize) -> Head {
        if len <= self.start {
            Head::Closed
        } else {
            error(
                Status::BadRequest,
                "the request ended before its headers did",
            )
        }
    }
}

/// `METHOD SP target SP HTTP/1.x`.
fn request_line(line: &[u8]) -> Result<(Method, Target), Head> {
    let bad = || error(Status::BadRequest, "the request line is malformed");
    let mut parts = line.split(|&b| b == b' ');
    let (Some(method), Some(target)) = (parts.next(), parts.next()) else {
        return Err(bad());
    };
    let version = parts.next();
    if parts.next().is_some()
        || method.is_empty()
        || !method.iter().all(|&b| is_tchar(b))
        || target.is_empty()
        || !target.iter().all(|&b| (0x21..0x7f).contains(&b))
    {
        return Err(bad());
    }
    match version {
        Some(b"HTTP/1.1" | b"HTTP/1.0") => {}
        None => {
            return Err(error(
                Status::BadRequest,
                "HTTP/0.9 requests are not served",
            ));
        }
        Some([b'H', b'T', b'T', b'P', b'/', major, b'.', minor])
            if major.is_ascii_digit() && minor.is_ascii_digit() =>
        {
            return Err(error(
                Status::VersionNotSupported,
                "only HTTP/1.0 and HTTP/1.1 are served",
            ));
        }
        Some(_) => return Err(bad()),
    }
    let method = match method {
        b"GET" => Method::Get,
        b"HEAD" => Method::Head,
        _ => Method::Other,
    };
    Ok((method, target_of(target)))
}

fn target_of(target: &[u8]) -> Target {
    // The absolute form (`http://host/metrics`) names the same path.
    let authority = [&b"http://"[..], b"https://"].iter().find_map(|scheme| {
        let n = scheme.len();
        (target.len() >= n && target[..n].eq_ignore_ascii_case(scheme)).then(|| &target[n..])
    });
    let path = match authority {
        Some(rest) => rest
            .iter()
            .position(|&b| b == b'/')
            .map_or(&b"/"[..], |slash| &rest[slash..]),
        None => target,
    };
    let path = path
        .split(|&b| b == b'?' || b == b'#')
        .next()
        .unwrap_or(path);
    match path {
        b"/metrics" => Target::Metrics,
        b"/" => Target::Index,
        _ => Target::Other,
    }
}

#[cfg(test)]
mod tests {
    use std::{
        io::{Read as _, Write as _},
        time::Instant,
    };

    use super::*;

    fn parse(bytes: &[u8]) -> Option<Head> {
        HeadParser::default().feed(bytes, 0)
    }

    /// Fed one byte at a time, the parser decides the same.
    fn parse_trickled(bytes: &[u8]) -> Option<Head> {
        let mut p = HeadParser::default();
        (1..=bytes.len()).find_map(|n| p.feed(&bytes[..n], n - 1))
    }

    fn answer(what: What) -> Option<Head> {
        Some(Head::Answer {
            what,
            head_only: false,
        })
    }

    fn status(head: Option<Head>) -> Option<Status> {
        match head? {
            Head::Answer {
                what: What::Error(s, _),
                ..
            } => Some(s),
            Head::Answer { .. } => Some(Status::Ok),
            Head::Closed => None,
        }
    }

    #[test]
    fn requests_are_routed() {
        let metrics = b"GET /metrics HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n";
        assert_eq!(parse(metrics), answer(What::Metrics));
        assert_eq!(parse_trickled(metrics), answer(What::Metrics));
        assert_eq!(
            parse(b"\r\nGET /metrics?x=1 HTTP/1.0\n\n"),
            answer(What::Metrics)
        );
        assert_eq!(
            parse(b"GET http://h:9464/metrics HTTP/1.1\r\n\r\n"),
            answer(What::Metrics)
        );
        assert_eq!(parse(b"GET / HTTP/1.1\r\n\r\n"), answer(What::Index));
        assert_eq!(
            parse(b"HEAD /metrics HTTP/1.1\r\n\r\n"),
            Some(Head::Answer {
                what: What::Metrics,
                head_only: true
            })
        );
        assert_eq!(
            status(parse(b"GET /nope HTTP/1.1\r\n\r\n")),
            Some(Status::NotFound)
        );
        assert_eq!(
            status(parse(b"GET /metrics/ HTTP/1.1\r\n\r\n")),
            Some(Status::NotFound)
        );
        for m in ["POST", "PUT", "DELETE", "OPTIONS", "get", "BREW"] {
            let req = format!("{m} /metrics HTTP/1.1\r\nContent-Length: 3\r\n\r\nabc");
            assert_eq!(
                status(parse(req.as_bytes())),
                Some(Status::MethodNotAllowed),
                "{m}"
            );
        }
        // Incomplete: no answer yet.
        assert_eq!(parse(b"GET /metrics HTTP/1.1\r\nHost: x\r\n"), None);
    }

    #[test]
    fn malformed_requests_are_refused() {
        for (req, want) in [
            (
                &b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03"[..],
                Status::BadRequest,
            ),
            (b"GET /metrics\r\n", Status::BadRequest),
            (b"GET\r\n\r\n", Status::BadRequest),
            (b"GET  /metrics HTTP/1.1\r\n\r\n", Status::BadRequest),
            (b"GET /metrics HTTP/1.1 x\r\n\r\n", Status::BadRequest),
            (b"GET /metrics FTP/1.1\r\n\r\n", Status::BadRequest),
            (b"G(T /metrics HTTP/1.1\r\n\r\n", Status::BadRequest),
            (b"GET /m\xc3\xa9 HTTP/1.1\r\n\r\n", Status::BadRequest),
            (
                b"GET /metrics HTTP/2.0\r\n\r\n",
                Status::VersionNotSupported,
            ),
            (
                b"GET /metrics HTTP/1.1\r\nno colon\r\n\r\n",
                Status::BadRequest,
            ),
            (
                b"GET /metrics HTTP/1.1\r\n folded: x\r\n\r\n",
                Status::BadRequest,
            ),
            (
                b"GET /metrics HTTP/1.1\r\nA: \x01\r\n\r\n",
                Status::BadRequest,
            ),
            (
                b"GET /metrics HTTP/1.1\r\nContent-Length: 99999999999999999999999\r\n\r\n",
                Status::BadRequest,
            ),
            (
                b"GET /metrics HTTP/1.1\r\nContent-Length: -1\r\n\r\n",
                Status::BadRequest,
            ),
            (
                b"GET /metrics HTTP/1.1\r\nContent-Length: 1073741824\r\n\r\n",
                Status::ContentTooLarge,
            ),
            (
                b"GET /metrics HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n",
                Status::ContentTooLarge,
            ),
        ] {
            assert_eq!(
                status(parse(req)),
                Some(want),
                "{}",
                String::from_utf8_lossy(req)
            );
            assert_eq!(status(parse_trickled(req)), Some(want));
        }
        let p = HeadParser::default();
        assert_eq!(status(Some(p.too_long())), Some(Status::UriTooLong));
        assert_eq!(p.ended(0), Head::Closed);
        let mut p = HeadParser::default();
        assert_eq!(p.feed(b"GET / HTTP/1.1\r\nA: b\r\n", 0), None);
        assert_eq!(status(Some(p.too_long())), Some(Status::HeadersTooLarge));
        assert_eq!(status(Some(p.ended(20))), Some(Status::BadRequest));
    }

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
