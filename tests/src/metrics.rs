//! `tcpq export`'s /metrics page: scraped, parsed into series, a listener's refusals.
use std::{collections::HashMap, io::Read as _, time::Duration};

/// `GET /metrics` from a `tcpq export` at `addr`: the whole answer, if it was a 200.
pub fn scrape(addr: &str) -> Option<String> {
    use std::io::Write as _;
    let mut s = std::net::TcpStream::connect(addr).ok()?;
    s.set_read_timeout(Some(Duration::from_secs(5))).ok()?;
    write!(
        s,
        "GET /metrics HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n"
    )
    .ok()?;
    let mut body = String::new();
    s.read_to_string(&mut body).ok()?;
    body.contains("200 OK").then_some(body)
}

/// 127.0.0.1:PORT with a port nothing listens on right now.
pub fn free_loopback_addr() -> String {
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("a free port")
        .port();
    format!("127.0.0.1:{port}")
}

/// The series of a /metrics page: full name with labels → value.
pub fn metric_series(text: &str) -> HashMap<String, f64> {
    text.lines()
        .filter(|l| l.starts_with("tcpq_"))
        .filter_map(|l| {
            let (k, v) = l.rsplit_once(' ')?;
            Some((k.to_string(), v.parse().ok()?))
        })
        .collect()
}

/// `tcpq_listen_refused_total` of one listener of one namespace on a /metrics page (summed over
/// its process labels).
pub fn listener_refused(series: &HashMap<String, f64>, netns: u64, listener: &str) -> f64 {
    series
        .iter()
        .filter(|(k, _)| {
            k.starts_with("tcpq_listen_refused_total{")
                && k.contains(&format!("netns=\"{netns}\""))
                && k.contains(&format!("listener=\"{listener}\""))
        })
        .map(|(_, v)| v)
        .sum()
}
