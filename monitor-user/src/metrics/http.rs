//! The scrape endpoint: `GET /metrics` over HTTP/1.1, and `GET /healthz` (is the
//! event loop running).
//!
//! A minimal responder rather than hyper or a web framework: there is one read-only
//! path on a local address, no request body to read and nothing to negotiate, so one
//! request per connection (`Connection: close`) answered from memory is all HTTP asks
//! here. What a server must still get right is here: the request head is bounded
//! (8 KiB, else 431), reading it is timed (5 s, else 408), so is writing the answer,
//! connections are bounded (each has its task), and the close lingers so that a
//! client that sent more than was read (a POST body) still gets the answer instead of
//! a reset.

use std::{
    io,
    net::{IpAddr, SocketAddr},
    sync::Arc,
    time::Duration,
};

use tokio::{
    io::{AsyncRead, AsyncReadExt, AsyncWriteExt},
    net::{TcpListener, TcpStream},
    sync::Semaphore,
    time::timeout,
};

use super::Metrics;

/// The media type of the answer: the OpenMetrics text format.
pub const CONTENT_TYPE: &str = "application/openmetrics-text; version=1.0.0; charset=utf-8";

#[derive(Debug, Clone, Copy)]
pub(super) struct Limits {
    /// Largest request head (request line and headers).
    pub max_request: usize,
    /// Time to receive the whole request head.
    pub read_timeout: Duration,
    /// Time to send the answer.
    pub write_timeout: Duration,
    /// Time to wait, after answering, for the client to close.
    pub linger: Duration,
    /// Connections served at once; more wait in the listen backlog.
    pub max_connections: usize,
}

impl Limits {
    pub(super) const DEFAULT: Limits = Limits {
        max_request: 8 * 1024,
        read_timeout: Duration::from_secs(5),
        write_timeout: Duration::from_secs(5),
        linger: Duration::from_secs(1),
        max_connections: 32,
    };
}

/// Serves `m` on `addr` (see [`bind`] and [`serve_on`]).
pub async fn serve(addr: SocketAddr, m: Metrics, allow_remote: bool) -> io::Result<()> {
    serve_on(bind(addr, allow_remote).await?, m).await
}

/// Binds the endpoint's listener. The metrics tell what the host's agents do and how
/// agentmon contains them, and the endpoint has no authentication, so an address
/// other than a loopback one (127.0.0.0/8, ::1) is refused unless `allow_remote`.
pub async fn bind(addr: SocketAddr, allow_remote: bool) -> io::Result<TcpListener> {
    if !allow_remote && !is_local(addr.ip()) {
        return Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            format!(
                "metrics address {addr} is not a loopback address; the endpoint has no \
                 authentication, so serving other hosts has to be asked for (allow_remote)"
            ),
        ));
    }
    TcpListener::bind(addr).await
}

/// A loopback address, IPv4-mapped ones (`::ffff:127.0.0.1`) included.
pub(super) fn is_local(ip: IpAddr) -> bool {
    ip.to_canonical().is_loopback()
}

/// Answers scrapes on `listener` until the future is dropped (connections being
/// served end within their timeouts) or accepting fails for good (the socket is
/// unusable).
pub async fn serve_on(listener: TcpListener, m: Metrics) -> io::Result<()> {
    serve_with(listener, m, Limits::DEFAULT).await
}

pub(super) async fn serve_with(listener: TcpListener, m: Metrics, lim: Limits) -> io::Result<()> {
    let slots = Arc::new(Semaphore::new(lim.max_connections));
    loop {
        // The semaphore is never closed.
        let slot = slots.clone().acquire_owned().await.map_err(io::Error::other)?;
        let stream = match listener.accept().await {
            Ok((s, _)) => s,
            Err(e) if is_fatal(&e) => return Err(e),
            Err(e) if is_per_connection(&e) => {
                tracing::debug!("metrics endpoint: accept: {e}");
                continue;
            }
            // Out of file descriptors or memory: wait instead of spinning.
            Err(e) => {
                tracing::warn!("metrics endpoint: accept: {e}");
                tokio::time::sleep(Duration::from_millis(100)).await;
                continue;
            }
        };
        let m = m.clone();
        tokio::spawn(async move {
            connection(stream, &m, lim).await;
            drop(slot);
        });
    }
}

/// Accept errors that mean the listening socket itself is unusable.
fn is_fatal(e: &io::Error) -> bool {
    matches!(
        e.raw_os_error(),
        Some(libc::EBADF | libc::EINVAL | libc::ENOTSOCK | libc::EOPNOTSUPP | libc::EFAULT)
    )
}

fn is_per_connection(e: &io::Error) -> bool {
    use io::ErrorKind::*;
    matches!(e.kind(), ConnectionAborted | ConnectionReset | ConnectionRefused | Interrupted | WouldBlock)
}

/// One connection: one request, one answer.
async fn connection(mut s: TcpStream, m: &Metrics, lim: Limits) {
    let answer = match timeout(lim.read_timeout, read_head(&mut s, lim.max_request)).await {
        Err(_) => plain("408 Request Timeout", ""),
        Ok(Ok(Head::Complete(head))) => respond(&head, m),
        Ok(Ok(Head::TooLarge)) => plain("431 Request Header Fields Too Large", ""),
        Ok(Ok(Head::Closed) | Err(_)) => return,
    };
    let sent = timeout(lim.write_timeout, async {
        s.write_all(&answer).await?;
        s.shutdown().await
    })
    .await;
    if matches!(sent, Ok(Ok(()))) {
        let _ = timeout(lim.linger, drain(&mut s)).await;
    }
}

enum Head {
    /// The request line and headers, through the blank line.
    Complete(Vec<u8>),
    TooLarge,
    /// The client closed before the head was complete.
    Closed,
}

async fn read_head(r: &mut (impl AsyncRead + Unpin), max: usize) -> io::Result<Head> {
    let mut buf = vec![0u8; max];
    let mut len = 0;
    loop {
        if len == max {
            return Ok(Head::TooLarge);
        }
        let n = r.read(&mut buf[len..]).await?;
        if n == 0 {
            return Ok(Head::Closed);
        }
        // The blank line may have started in the previous read.
        let from = len.saturating_sub(3);
        len += n;
        if let Some(end) = head_end(&buf[from..len]) {
            buf.truncate(from + end);
            return Ok(Head::Complete(buf));
        }
    }
}

/// Where the head ends: after the first blank line (CRLF CRLF, or LF LF from a
/// hand-typed request).
fn head_end(b: &[u8]) -> Option<usize> {
    (0..b.len()).find_map(|i| {
        let rest = &b[i..];
        if rest.starts_with(b"\r\n\r\n") {
            Some(i + 4)
        } else if rest.starts_with(b"\n\n") {
            Some(i + 2)
        } else {
            None
        }
    })
}

/// Reads and drops what the client still sends, until it closes (bounded).
async fn drain(r: &mut (impl AsyncRead + Unpin)) {
    let mut buf = [0u8; 4096];
    let mut left = 64 * 1024usize;
    while left > 0 {
        match r.read(&mut buf).await {
            Ok(0) | Err(_) => break,
            Ok(n) => left = left.saturating_sub(n),
        }
    }
}

/// The answer to a request head.
fn respond(head: &[u8], m: &Metrics) -> Vec<u8> {
    const BAD: &str = "400 Bad Request";
    let line = head.split(|&b| b == b'\n').next().unwrap_or_default();
    let Ok(line) = std::str::from_utf8(line.strip_suffix(b"\r").unwrap_or(line)) else {
        return plain(BAD, "");
    };
    let mut parts = line.split(' ');
    let (Some(method), Some(target), Some(version), None) =
        (parts.next(), parts.next(), parts.next(), parts.next())
    else {
        return plain(BAD, "");
    };
    if !matches!(version, "HTTP/1.0" | "HTTP/1.1") {
        return plain("505 HTTP Version Not Supported", "");
    }
    // A query string (`?…`) is ignored.
    let path = target.split_once('?').map_or(target, |(p, _)| p);
    let (status, content_type, body) = match path {
        "/metrics" => ("200 OK", CONTENT_TYPE, m.encode()),
        // Liveness: the event loop ran within the last LIVE (it beats every half
        // second); a stopped, traced or stuck agentmon answers 503.
        "/healthz" => match m.still() {
            still if still <= LIVE => ("200 OK", TEXT, "ok\n".to_string()),
            still => (
                "503 Service Unavailable",
                TEXT,
                format!("agentmon's event loop has not run for {} ms\n", still.as_millis()),
            ),
        },
        _ => return plain("404 Not Found", ""),
    };
    match method {
        "GET" => response(status, content_type, "", body.as_bytes(), true),
        "HEAD" => response(status, content_type, "", body.as_bytes(), false),
        _ => plain("405 Method Not Allowed", "Allow: GET, HEAD\r\n"),
    }
}

/// How long the event loop may be still before `/healthz` says agentmon is not live.
pub const LIVE: std::time::Duration = std::time::Duration::from_secs(5);
const TEXT: &str = "text/plain; charset=utf-8";

/// An error answer: the status as a text body.
fn plain(status: &str, headers: &str) -> Vec<u8> {
    response(status, TEXT, headers, format!("{status}\n").as_bytes(), true)
}

/// An answer; `headers` are extra header lines, each ending in CRLF. Without
/// `with_body` (HEAD), `Content-Length` still gives the body's length.
fn response(status: &str, content_type: &str, headers: &str, body: &[u8], with_body: bool) -> Vec<u8> {
    let mut out = format!(
        "HTTP/1.1 {status}\r\nContent-Type: {content_type}\r\nContent-Length: {}\r\n\
         Cache-Control: no-store\r\nConnection: close\r\n{headers}\r\n",
        body.len()
    )
    .into_bytes();
    if with_body {
        out.extend_from_slice(body);
    }
    out
}
