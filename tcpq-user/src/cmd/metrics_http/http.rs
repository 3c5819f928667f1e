//! The HTTP/1.1 of /metrics: the request head parsed as it arrives into what to answer, and
//! the answer rendered.
use std::sync::{Arc, Mutex};

const OPENMETRICS: &str = "application/openmetrics-text; version=1.0.0; charset=utf-8";
const TEXT: &str = "text/plain; charset=utf-8";

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Status {
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
pub(super) enum What {
    Metrics,
    Index,
    Error(Status, &'static str),
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Head {
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
pub(super) fn render(what: What, page: &Mutex<Arc<str>>) -> (String, Arc<str>) {
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
pub(super) struct HeadParser {
    /// Where the request line starts (empty lines before it are allowed, RFC 9112 2.2).
    start: usize,
    /// Where the line being read starts, once the request line is done.
    line_start: Option<usize>,
    request: Option<(Method, Target)>,
    body: bool,
}

impl HeadParser {
    /// Looks at `buf[from..]`, the bytes just read; `Some` once the answer is decided.
    pub(super) fn feed(&mut self, buf: &[u8], from: usize) -> Option<Head> {
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
    pub(super) fn too_long(&self) -> Head {
        if self.line_start.is_none() {
            error(Status::UriTooLong, "the request line is too long")
        } else {
            error(Status::HeadersTooLarge, "the request headers are too long")
        }
    }

    /// The client closed its side after `len` bytes, before the head was over.
    pub(super) fn ended(&self, len: usize) -> Head {
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
}
