//! Strict HTTP/1.1 request framing, below hyper's parser.
//!
//! hyper (through `httparse`) accepts a few things that RFC 9112 lets a server accept but
//! that two parsers can read two ways: a bare LF as a line end in the head, and any byte
//! but LF in a chunk extension; and it reads a request with both `Content-Length` and
//! `Transfer-Encoding` as chunked. [`Framing`] follows the request byte stream as hyper
//! reads it (heads, `Content-Length` and chunked bodies, trailers) and, where it finds one
//! of these, ends what hyper reads of the connection right there with a few bytes its own
//! parser refuses: `NUL CR LF CR LF` in a head (hyper answers `400` and closes the
//! connection; nothing is forwarded), an LF in a chunk extension (the body fails, and the
//! router answers `400` and closes). Nothing the client sends after that reaches hyper.
//!
//! Whatever it does not follow for sure (an HTTP/2 preface, `CONNECT`, an `Upgrade`, a
//! framing header hyper will refuse anyway) turns it into a pass-through for the rest of
//! the connection: it never changes a byte it is not sure about. It reads every byte of a
//! head once (`memchr` for line ends) and skips body bytes by length, without copying
//! anything but a line split across two reads.
//!
//! When hyper closes a connection in the middle of a request body (an answer given before
//! the body was read: a 413, a refused request), [`ClientIo`] closes it the way nginx's
//! lingering close does: it sends its end of the stream, then reads and discards what the
//! client still sends, for a bounded time, so that the client reads the answer instead of
//! a reset for the bytes left unread in the socket.

use std::io;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::task::{Context, Poll, ready};
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::time::{Instant, Sleep};

/// Longest a lingering close waits for the client's next bytes.
const LINGER_QUIET: Duration = Duration::from_secs(2);
/// Longest a lingering close lasts in all.
const LINGER_TOTAL: Duration = Duration::from_secs(30);
/// Reads a lingering close makes in one poll before it lets other tasks run.
const LINGER_READS_PER_POLL: usize = 16;

/// Longest head line carried over from one read to the next; past it hyper's head-size
/// limit answers `431`, and the tracker stops following.
const MAX_CARRIED_LINE: usize = 64 * 1024;

/// What hyper reads in place of a head that must be refused: a NUL, which no part of a
/// head may hold, then the end of a head, so that hyper parses at once (after a partial
/// read it waits for a blank line before parsing again).
pub const REFUSE_HEAD: &[u8] = b"\0\r\n\r\n";

/// What hyper reads in place of a bad chunk-extension byte (it refuses a newline there).
pub const REFUSE_CHUNK: &[u8] = b"\n";

/// Where hyper's view of the stream must end, and what it reads there instead.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Refusal {
    /// Offset in the bytes just fed.
    pub at: usize,
    /// The bytes hyper reads from there on, before the end of the stream.
    pub poison: &'static [u8],
}

/// Where the tracker is in the request stream.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum State {
    /// In a request head (or, with `trailers`, a chunked body's trailer section).
    Head,
    /// In a `Content-Length` body: bytes left.
    Body(u64),
    /// In a chunk-size line's hex digits.
    Size(u64),
    /// Whitespace after the chunk size.
    SizeSpace(u64),
    /// In a chunk extension.
    Extension(u64),
    /// After the chunk-size line's CR.
    SizeLf(u64),
    /// In chunk data: bytes left.
    Data(u64),
    /// After chunk data: the CR, then the LF.
    DataCr,
    DataLf,
    /// Not following (see the module docs).
    Passthrough,
}

/// What a head's lines said so far.
#[derive(Debug, Default, Clone, Copy)]
struct Head {
    /// The request line has been read (the next lines are header fields).
    started: bool,
    /// `Content-Length` value (all agree), when given.
    content_length: Option<u64>,
    /// A `Transfer-Encoding` field was given, and whether its last coding is `chunked`.
    transfer_encoding: Option<bool>,
    /// Something the tracker does not follow past this head (`Upgrade`, `CONNECT`, an
    /// unreadable `Content-Length`).
    stop_after: bool,
    /// This is a trailer section, not a request head.
    trailers: bool,
}

/// Follows the request bytes of one HTTP/1.1 connection (see the module docs).
#[derive(Debug)]
pub struct Framing {
    state: State,
    head: Head,
    /// A head line split across reads.
    carried: Vec<u8>,
    /// Whether the first line of the connection is still to come (an HTTP/2 preface?).
    first_line: bool,
}

impl Default for Framing {
    fn default() -> Self {
        Self::new()
    }
}

impl Framing {
    /// A tracker at the start of a connection.
    #[must_use]
    pub fn new() -> Self {
        Framing {
            state: State::Head,
            head: Head::default(),
            carried: Vec::new(),
            first_line: true,
        }
    }

    /// Whether the tracker stopped following this connection.
    #[must_use]
    pub fn is_passthrough(&self) -> bool {
        self.state == State::Passthrough
    }

    /// Whether the bytes read so far end inside a request body (more of it is due).
    #[must_use]
    pub fn in_body(&self) -> bool {
        !matches!(self.state, State::Head | State::Passthrough)
    }

    /// Follows `buf`, the next bytes read from the client. Returns where hyper's view must
    /// end when it holds a request that must be refused (the tracker then passes through).
    pub fn feed(&mut self, buf: &[u8]) -> Option<Refusal> {
        let mut i = 0;
        while i < buf.len() {
            i = match self.state {
                State::Passthrough => return None,
                State::Head => match self.head_bytes(buf, i) {
                    Ok(next) => next,
                    Err(at) => {
                        self.state = State::Passthrough;
                        return Some(Refusal {
                            at,
                            poison: REFUSE_HEAD,
                        });
                    }
                },
                State::Body(left) => {
                    let take = left.min((buf.len() - i) as u64);
                    self.state = if take == left {
                        self.next_head()
                    } else {
                        State::Body(left - take)
                    };
                    i + take as usize
                }
                State::Data(left) => {
                    let take = left.min((buf.len() - i) as u64);
                    self.state = if take == left {
                        State::DataCr
                    } else {
                        State::Data(left - take)
                    };
                    i + take as usize
                }
                _ => {
                    if self.chunk_byte(buf[i]) {
                        return Some(Refusal {
                            at: i,
                            poison: REFUSE_CHUNK,
                        });
                    }
                    i + 1
                }
            };
        }
        None
    }

    /// One byte of a chunk-size line or of the CRLF after chunk data. Returns whether it
    /// must be refused.
    fn chunk_byte(&mut self, b: u8) -> bool {
        self.state = match self.state {
            State::Size(size) => match hex(b) {
                Some(d) => match size.checked_mul(16) {
                    Some(s) => State::Size(s + u64::from(d)),
                    // hyper refuses the overflow.
                    None => State::Passthrough,
                },
                None => self.after_size(size, b),
            },
            State::SizeSpace(size) => self.after_size(size, b),
            State::Extension(size) => match b {
                b'\r' => State::SizeLf(size),
                b'\t' | b' '..=b'~' | 0x80..=0xff => State::Extension(size),
                _ => {
                    // A control character (LF included, which hyper refuses itself).
                    self.state = State::Passthrough;
                    return true;
                }
            },
            State::SizeLf(0) if b == b'\n' => {
                self.head = Head {
                    started: true,
                    trailers: true,
                    ..Head::default()
                };
                State::Head
            }
            State::SizeLf(size) if b == b'\n' => State::Data(size),
            State::DataCr if b == b'\r' => State::DataLf,
            State::DataLf if b == b'\n' => State::Size(0),
            // hyper refuses everything else here.
            _ => State::Passthrough,
        };
        false
    }

    fn after_size(&self, size: u64, b: u8) -> State {
        match b {
            b' ' | b'\t' => State::SizeSpace(size),
            b';' => State::Extension(size),
            b'\r' => State::SizeLf(size),
            _ => State::Passthrough,
        }
    }

    /// Head bytes from `buf[i..]`: up to and including the next line end, or all of it.
    /// Returns where to go on, or the offset to refuse at.
    fn head_bytes(&mut self, buf: &[u8], i: usize) -> Result<usize, usize> {
        let Some(offset) = memchr::memchr(b'\n', &buf[i..]) else {
            if self.carried.len() + (buf.len() - i) > MAX_CARRIED_LINE {
                self.state = State::Passthrough;
            } else {
                self.carried.extend_from_slice(&buf[i..]);
            }
            return Ok(buf.len());
        };
        let end = i + offset;
        let refuse = if self.carried.is_empty() {
            self.line(&buf[i..end])
        } else {
            let mut carried = std::mem::take(&mut self.carried);
            carried.extend_from_slice(&buf[i..end]);
            let refuse = self.line(&carried);
            carried.clear();
            self.carried = carried;
            refuse
        };
        if refuse { Err(end) } else { Ok(end + 1) }
    }

    /// One head line (without its LF). Returns whether the head must be refused at this
    /// line's end: the line ends with a bare LF, or the head ends here and is ambiguous.
    fn line(&mut self, line: &[u8]) -> bool {
        let content = match line.split_last() {
            Some((b'\r', rest)) => rest,
            // Refused at once: the head is not read further.
            _ => return true,
        };
        if content.is_empty() {
            if !self.head.started && !self.head.trailers {
                // Empty lines before a request line are skipped (by hyper too).
                return false;
            }
            return self.head_end();
        }
        if !self.head.started {
            self.head.started = true;
            if std::mem::take(&mut self.first_line) && content.starts_with(b"PRI * HTTP/2.0") {
                self.state = State::Passthrough;
            } else if content.starts_with(b"CONNECT ") {
                self.head.stop_after = true;
            }
            return false;
        }
        self.field(content);
        false
    }

    /// A header (or trailer) field line.
    #[inline]
    fn field(&mut self, content: &[u8]) {
        // Most lines name none of the three fields followed: one look at the first byte.
        if self.head.trailers || !matches!(content[0] | 0x20, b'c' | b't' | b'u') {
            return;
        }
        self.framing_field(content);
    }

    fn framing_field(&mut self, content: &[u8]) {
        // A field name ends right at its colon (hyper refuses whitespace or any other byte
        // before it), so each of the three names is one length and one comparison away.
        let named = |name: &[u8]| {
            content.get(name.len()) == Some(&b':')
                && content[..name.len()].eq_ignore_ascii_case(name)
        };
        let value = |name: &[u8]| content[name.len() + 1..].trim_ascii();
        if named(b"content-length") {
            let value = value(b"content-length");
            match (content_length(value), self.head.content_length) {
                (Some(n), None) => self.head.content_length = Some(n),
                (Some(n), Some(m)) if n == m => {}
                // Unreadable or disagreeing: hyper refuses; stop following.
                _ => self.head.stop_after = true,
            }
        } else if named(b"transfer-encoding") {
            let value = value(b"transfer-encoding");
            let last = value.rsplit(|&b| b == b',').next().unwrap_or_default();
            self.head.transfer_encoding = Some(last.trim_ascii().eq_ignore_ascii_case(b"chunked"));
        } else if named(b"upgrade") {
            self.head.stop_after = true;
        }
    }

    /// The empty line that ends a head or a trailer section. Returns whether to refuse.
    fn head_end(&mut self) -> bool {
        let head = self.head;
        if head.content_length.is_some() && head.transfer_encoding.is_some() {
            return true;
        }
        self.state = if head.stop_after {
            State::Passthrough
        } else if head.trailers {
            self.next_head()
        } else {
            match (head.transfer_encoding, head.content_length) {
                (Some(true), _) => State::Size(0),
                // hyper refuses a request whose last coding is not chunked.
                (Some(false), _) => State::Passthrough,
                (None, Some(n)) if n > 0 => State::Body(n),
                (None, _) => self.next_head(),
            }
        };
        if matches!(self.state, State::Size(_) | State::Body(_)) {
            self.head = Head::default();
        }
        false
    }

    /// Ready for the next request's head.
    fn next_head(&mut self) -> State {
        self.head = Head::default();
        State::Head
    }
}

fn hex(b: u8) -> Option<u8> {
    match b {
        b'0'..=b'9' => Some(b - b'0'),
        b'a'..=b'f' => Some(b - b'a' + 10),
        b'A'..=b'F' => Some(b - b'A' + 10),
        _ => None,
    }
}

/// A `Content-Length` value: digits, or a comma-separated list of equal ones.
fn content_length(value: &[u8]) -> Option<u64> {
    let mut found = None;
    for part in value.split(|&b| b == b',') {
        let part = part.trim_ascii();
        if part.is_empty() || part.len() > 19 || !part.iter().all(u8::is_ascii_digit) {
            return None;
        }
        let n = part.iter().fold(0u64, |n, d| n * 10 + u64::from(d - b'0'));
        match found {
            None => found = Some(n),
            Some(m) if m == n => {}
            Some(_) => return None,
        }
    }
    found
}

/// Bytes read and written on a connection, which its idle watch samples.
#[derive(Debug, Default)]
pub struct Activity {
    /// Read and write calls that moved bytes.
    pub io: AtomicU64,
    /// Requests between their arrival and their response head.
    pub requests: AtomicU64,
    /// Enough has been read to tell HTTP/1.1 from an HTTP/2 preface (hyper's version
    /// sniffing has no timeout of its own).
    pub version_known: std::sync::atomic::AtomicBool,
}

impl Activity {
    /// A snapshot that changes whenever anything happens on the connection, with whether a
    /// request is waiting for its answer.
    #[must_use]
    pub fn sample(&self) -> (u64, bool) {
        (
            self.io.load(Ordering::Relaxed),
            self.requests.load(Ordering::Relaxed) > 0,
        )
    }
}

/// A client connection's IO: request bytes followed by [`Framing`] (HTTP/1.1 only; `None`
/// for TLS connections that chose `h2`), and activity counted for the idle timeout.
#[derive(Debug)]
pub struct ClientIo<T> {
    inner: T,
    framing: Option<Box<Framing>>,
    activity: Option<Arc<Activity>>,
    /// After a refusal: what hyper still has to read of the poison, then nothing.
    refused: Option<&'static [u8]>,
    /// Bytes read until the HTTP version can be told (then `u8::MAX`).
    sniffed: u8,
    /// A lingering close under way (see the module docs).
    linger: Option<Box<Linger>>,
}

/// The state of a lingering close.
#[derive(Debug)]
struct Linger {
    /// Our end of the stream has been shut.
    shut: bool,
    /// When the client's next bytes are due.
    quiet: Pin<Box<Sleep>>,
    /// When the close ends whatever the client does.
    until: Instant,
}

impl<T> ClientIo<T> {
    /// Wraps `inner`.
    pub fn new(inner: T, strict: bool, activity: Option<Arc<Activity>>) -> Self {
        ClientIo {
            inner,
            framing: strict.then(|| Box::new(Framing::new())),
            activity,
            refused: None,
            sniffed: 0,
            linger: None,
        }
    }

    /// Whether closing now would leave request bytes unread: the stream ends inside a body,
    /// or after a refused request.
    fn unread_request_bytes(&self) -> bool {
        self.refused.is_some() || self.framing.as_ref().is_some_and(|f| f.in_body())
    }

    fn touched(&self) {
        if let Some(activity) = &self.activity {
            activity.io.fetch_add(1, Ordering::Relaxed);
        }
    }

    /// Counts the first bytes read until they tell HTTP/1.1 (not a `P`) from the 24-byte
    /// HTTP/2 preface.
    #[inline]
    fn sniff(&mut self, read: &[u8]) {
        if self.sniffed == u8::MAX {
            return;
        }
        let total = usize::from(self.sniffed) + read.len();
        if (self.sniffed == 0 && read[0] != b'P') || total >= 24 {
            self.sniffed = u8::MAX;
            if let Some(activity) = &self.activity {
                activity.version_known.store(true, Ordering::Relaxed);
            }
        } else {
            self.sniffed = total as u8;
        }
    }
}

impl<T: AsyncRead + Unpin> AsyncRead for ClientIo<T> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = &mut *self;
        if let Some(rest) = &mut this.refused {
            // The client's bytes end at the refusal: hyper reads the poison, then the end.
            let n = rest.len().min(buf.remaining());
            buf.put_slice(&rest[..n]);
            *rest = &rest[n..];
            return Poll::Ready(Ok(()));
        }
        let before = buf.filled().len();
        let polled = Pin::new(&mut this.inner).poll_read(cx, buf);
        if let Poll::Ready(Ok(())) = polled
            && buf.filled().len() > before
        {
            this.touched();
            this.sniff(&buf.filled()[before..]);
            if let Some(framing) = &mut this.framing {
                let refusal = framing.feed(&buf.filled()[before..]);
                if framing.is_passthrough() {
                    this.framing = None;
                }
                if let Some(Refusal { at, poison }) = refusal {
                    buf.set_filled(before + at);
                    let n = poison.len().min(buf.remaining());
                    buf.put_slice(&poison[..n]);
                    this.refused = Some(&poison[n..]);
                }
            }
        }
        polled
    }
}

impl<T: AsyncRead + AsyncWrite + Unpin> AsyncWrite for ClientIo<T> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        let polled = Pin::new(&mut self.inner).poll_write(cx, buf);
        if let Poll::Ready(Ok(n)) = polled
            && n > 0
        {
            self.touched();
        }
        polled
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        let polled = Pin::new(&mut self.inner).poll_write_vectored(cx, bufs);
        if let Poll::Ready(Ok(n)) = polled
            && n > 0
        {
            self.touched();
        }
        polled
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let this = &mut *self;
        if this.linger.is_none() {
            if !this.unread_request_bytes() {
                return Pin::new(&mut this.inner).poll_shutdown(cx);
            }
            let now = Instant::now();
            this.linger = Some(Box::new(Linger {
                shut: false,
                quiet: Box::pin(tokio::time::sleep_until(now + LINGER_QUIET)),
                until: now + LINGER_TOTAL,
            }));
        }
        let Some(linger) = this.linger.as_mut() else {
            unreachable!("set above")
        };
        if !linger.shut {
            ready!(Pin::new(&mut this.inner).poll_shutdown(cx))?;
            linger.shut = true;
        }
        // The answer is on its way with our end of the stream; what the client still
        // sends is read and dropped until it ends its side, falls quiet, or time is up.
        let mut scratch = [0u8; 8192];
        for _ in 0..LINGER_READS_PER_POLL {
            if Instant::now() >= linger.until {
                return Poll::Ready(Ok(()));
            }
            let mut buf = ReadBuf::new(&mut scratch);
            match Pin::new(&mut this.inner).poll_read(cx, &mut buf) {
                Poll::Ready(Ok(())) if buf.filled().is_empty() => return Poll::Ready(Ok(())),
                Poll::Ready(Ok(())) => {
                    let next = (Instant::now() + LINGER_QUIET).min(linger.until);
                    linger.quiet.as_mut().reset(next);
                }
                Poll::Ready(Err(_)) => return Poll::Ready(Ok(())),
                Poll::Pending => {
                    ready!(linger.quiet.as_mut().poll(cx));
                    return Poll::Ready(Ok(()));
                }
            }
        }
        cx.waker().wake_by_ref();
        Poll::Pending
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The bytes hyper reads when `input` arrives in reads of the given sizes.
    fn seen(input: &[u8], splits: &[usize]) -> Vec<u8> {
        let mut framing = Framing::new();
        let mut out = Vec::new();
        let mut rest = input;
        for &n in splits.iter().chain(std::iter::once(&usize::MAX)) {
            let (read, after) = rest.split_at(n.min(rest.len()));
            rest = after;
            match framing.feed(read) {
                Some(Refusal { at, poison }) => {
                    out.extend_from_slice(&read[..at]);
                    out.extend_from_slice(poison);
                    return out;
                }
                None => out.extend_from_slice(read),
            }
            if rest.is_empty() {
                break;
            }
        }
        out
    }

    /// What hyper reads of `input`, which is the same however it is split into two reads
    /// (checked at every split point).
    fn run(input: &[u8]) -> Vec<u8> {
        let whole = seen(input, &[]);
        for split in 1..input.len() {
            assert_eq!(seen(input, &[split]), whole, "split at {split}");
        }
        whole
    }

    fn untouched(input: &[u8]) {
        assert_eq!(run(input), input, "{}", String::from_utf8_lossy(input));
    }

    fn refused_at(input: &[u8], at: usize, poison: &[u8]) {
        let out = run(input);
        let mut expected = input[..at].to_vec();
        expected.extend_from_slice(poison);
        assert_eq!(out, expected, "{}", String::from_utf8_lossy(input));
    }

    #[test]
    fn well_formed_requests_pass_untouched() {
        untouched(b"GET / HTTP/1.1\r\nHost: a\r\n\r\nGET /2 HTTP/1.1\r\nHost: a\r\n\r\n");
        untouched(
            b"POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 5\r\n\r\nab\ncdGET / HTTP/1.1\r\n\r\n",
        );
        untouched(
            b"POST / HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n3;name=\"v a\"\r\na\nb\r\n0\r\nx-t: 1\r\n\r\nGET / HTTP/1.1\r\n\r\n",
        );
        untouched(b"\r\nGET / HTTP/1.1\r\nContent-Length: 2, 2\r\n\r\nab");
    }

    #[test]
    fn in_body_tells_when_more_of_a_body_is_due() {
        let mut framing = Framing::new();
        assert!(!framing.in_body());
        assert_eq!(
            framing.feed(b"POST / HTTP/1.1\r\nContent-Length: 6\r\n\r\nabc"),
            None
        );
        assert!(framing.in_body(), "3 of 6 body bytes read");
        assert_eq!(framing.feed(b"def"), None);
        assert!(!framing.in_body(), "the body is whole");
        let chunked = b"POST / HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n3\r\nabc\r\n";
        assert_eq!(framing.feed(chunked), None);
        assert!(framing.in_body(), "the last chunk is still due");
        assert_eq!(framing.feed(b"0\r\n\r\n"), None);
        assert!(!framing.in_body());
    }

    #[test]
    fn a_bare_lf_in_a_head_refuses_it_there() {
        let req = b"GET / HTTP/1.1\nHost: a\r\n\r\n";
        refused_at(req, 14, REFUSE_HEAD);
        let req = b"GET / HTTP/1.1\r\nHost: a\n\n";
        refused_at(req, req.len() - 2, REFUSE_HEAD);
        let req = b"GET / HTTP/1.1\r\nHost: a\r\n\n";
        refused_at(req, req.len() - 1, REFUSE_HEAD);
        // In a second request, after a body that holds LFs.
        let req = b"POST / HTTP/1.1\r\nContent-Length: 3\r\n\r\na\nbGET / HTTP/1.1\r\nx: y\n\r\n";
        refused_at(req, req.len() - 3, REFUSE_HEAD);
    }

    #[test]
    fn content_length_with_transfer_encoding_is_refused() {
        let req =
            b"POST / HTTP/1.1\r\nContent-Length: 4\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n";
        refused_at(req, req.len() - 6, REFUSE_HEAD);
    }

    #[test]
    fn a_control_character_in_a_chunk_extension_is_refused() {
        let req =
            b"POST / HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n2;\x01=x\r\nab\r\n0\r\n\r\n";
        let at = req.iter().position(|&b| b == 1).unwrap();
        refused_at(req, at, REFUSE_CHUNK);
    }

    #[test]
    fn a_bare_lf_in_trailers_is_refused() {
        let req = b"POST / HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n0\r\nx: 1\n\r\n";
        refused_at(req, req.len() - 3, REFUSE_HEAD);
    }

    #[test]
    fn what_is_not_followed_passes_through() {
        // HTTP/2 prior knowledge.
        untouched(b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n\x00\x00\n\x04");
        // An upgrade: what follows is the tunnel's.
        untouched(b"GET / HTTP/1.1\r\nUpgrade: websocket\r\n\r\nGET / HTTP/1.1\nx\n\n");
        untouched(b"CONNECT a:1 HTTP/1.1\r\n\r\n\n\n\n");
        // Disagreeing lengths, which hyper refuses itself.
        untouched(
            b"POST / HTTP/1.1\r\nContent-Length: 2\r\nContent-Length: 3\r\n\r\nGET / HTTP/1.1\n\n",
        );
    }

    #[test]
    fn content_lengths_are_read_like_hyper() {
        assert_eq!(content_length(b"12"), Some(12));
        assert_eq!(content_length(b"3, 3"), Some(3));
        assert_eq!(content_length(b"3, 4"), None);
        assert_eq!(content_length(b"+3"), None);
        assert_eq!(content_length(b""), None);
        assert_eq!(content_length(b"99999999999999999999"), None);
    }
}
