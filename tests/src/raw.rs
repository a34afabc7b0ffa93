//! Raw client connections, for the bytes a well-behaved HTTP client never sends.
//!
//! [`RawConn`] writes exact bytes (at once, in pieces or byte by byte, with a flush between
//! writes), reads HTTP/1.1 responses ([`RawResponse`]: status, headers, body framed by
//! `Content-Length`, chunked or the end of the connection) and checks that the peer closed
//! the connection. For HTTP/2 it reads frames ([`H2Frame`]); [`h2`] encodes the few frames
//! and the HPACK header block a hand-made h2c client needs. Every read is bounded by
//! [`crate::DEADLINE`], which only turns a hang into a readable failure.

use std::io;
use std::net::SocketAddr;

use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
use tokio::net::TcpStream;
use tokio::net::tcp::{OwnedReadHalf, OwnedWriteHalf};

use crate::{DEADLINE, within};

/// A raw TCP connection with the bytes read but not consumed yet. Dropping it closes the
/// connection.
#[derive(Debug)]
pub struct RawConn {
    reader: Reader,
    writer: OwnedWriteHalf,
}

/// The read side of a [`RawConn`].
#[derive(Debug)]
struct Reader {
    half: OwnedReadHalf,
    /// Read from the socket, not yet returned by a response or frame.
    buf: Vec<u8>,
}

/// An HTTP/1.1 response as read off the wire.
#[derive(Debug, Clone)]
pub struct RawResponse {
    /// The status code.
    pub status: u16,
    /// The header fields, names lower-cased, in order.
    pub headers: Vec<(String, String)>,
    /// The body, de-chunked.
    pub body: Vec<u8>,
}

/// One HTTP/2 frame as read off the wire.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct H2Frame {
    /// The frame type (see [`h2`] for the constants).
    pub kind: u8,
    /// The flags.
    pub flags: u8,
    /// The stream id.
    pub stream: u32,
    /// The payload.
    pub payload: Vec<u8>,
}

/// How a connection ended, from [`RawConn::wait_for_close`].
#[derive(Debug)]
pub enum Closed {
    /// An orderly end of the stream (FIN).
    Eof,
    /// A read error, typically a reset.
    Error(io::Error),
}

// === impl RawConn ===

impl RawConn {
    /// Connects to `addr` with `TCP_NODELAY`, so each write leaves at once.
    ///
    /// # Panics
    ///
    /// When the connection fails or takes past the deadline.
    pub async fn connect(addr: SocketAddr) -> RawConn {
        let stream = within(
            &format!("a TCP connection to {addr}"),
            DEADLINE,
            TcpStream::connect(addr),
        )
        .await
        .unwrap_or_else(|e| panic!("connect to {addr}: {e}"));
        stream.set_nodelay(true).expect("set TCP_NODELAY");
        let (half, writer) = stream.into_split();
        RawConn {
            reader: Reader {
                half,
                buf: Vec::new(),
            },
            writer,
        }
    }

    /// Writes all of `bytes` and flushes.
    ///
    /// # Panics
    ///
    /// When the write fails.
    pub async fn send(&mut self, bytes: &[u8]) {
        self.try_send(bytes)
            .await
            .unwrap_or_else(|e| panic!("write {} bytes: {e}", bytes.len()));
    }

    /// Writes all of `bytes` and flushes, returning a write error (the peer may have closed
    /// on purpose).
    ///
    /// # Errors
    ///
    /// When the write or the flush fails.
    pub async fn try_send(&mut self, bytes: &[u8]) -> io::Result<()> {
        within("a write to complete", DEADLINE, async {
            self.writer.write_all(bytes).await?;
            self.writer.flush().await
        })
        .await
    }

    /// Writes `bytes` in `pieces` writes of about equal size, flushing after each. Stops at
    /// the first failed write and returns its error: a peer that refuses what it has read
    /// may close before the rest arrives.
    ///
    /// # Errors
    ///
    /// The first write error.
    pub async fn send_in_pieces(&mut self, bytes: &[u8], pieces: usize) -> io::Result<()> {
        let size = bytes.len().div_ceil(pieces.max(1)).max(1);
        for piece in bytes.chunks(size) {
            self.try_send(piece).await?;
            // Let the peer read this piece alone before the next one arrives.
            tokio::task::yield_now().await;
        }
        Ok(())
    }

    /// [`RawConn::send_in_pieces`] with one byte per write.
    ///
    /// # Errors
    ///
    /// The first write error.
    pub async fn send_byte_by_byte(&mut self, bytes: &[u8]) -> io::Result<()> {
        self.send_in_pieces(bytes, bytes.len()).await
    }

    /// Reads the next response.
    ///
    /// # Panics
    ///
    /// When the connection ends or fails before a whole response, the response is not
    /// HTTP/1.1, or the deadline passes.
    pub async fn response(&mut self, what: &str) -> RawResponse {
        let read = within(what, DEADLINE, self.reader.response()).await;
        self.reader.expect_response(read, what)
    }

    /// Writes `bytes` while reading the next response, for a request so large that the
    /// peer answers (and closes) before it has read all of it. A write error is ignored.
    ///
    /// # Panics
    ///
    /// As [`RawConn::response`].
    pub async fn send_while_reading(&mut self, bytes: &[u8], what: &str) -> RawResponse {
        let write = async {
            let _ = self.writer.write_all(bytes).await;
            let _ = self.writer.flush().await;
        };
        let read = within(what, DEADLINE, async {
            let (read, ()) = tokio::join!(self.reader.response(), write);
            read
        })
        .await;
        self.reader.expect_response(read, what)
    }

    /// Reads the next response: `Ok(None)` when the connection ends before a whole one.
    ///
    /// # Errors
    ///
    /// A read error before a whole response.
    pub async fn read_response(&mut self) -> io::Result<Option<RawResponse>> {
        self.reader.response().await
    }

    /// Reads the next HTTP/2 frame: `Ok(None)` when the connection ends first.
    ///
    /// # Errors
    ///
    /// A read error before a whole frame.
    pub async fn read_h2_frame(&mut self) -> io::Result<Option<H2Frame>> {
        self.reader.h2_frame().await
    }

    /// Reads frames until one satisfies `wanted` and returns it, with every frame read
    /// before it (`None` when the connection ends or fails first).
    ///
    /// # Panics
    ///
    /// When the deadline passes first.
    pub async fn h2_frame_where(
        &mut self,
        what: &str,
        wanted: impl Fn(&H2Frame) -> bool,
    ) -> (Option<H2Frame>, Vec<H2Frame>) {
        let mut seen = Vec::new();
        let found = within(what, DEADLINE, async {
            loop {
                match self.reader.h2_frame().await {
                    Ok(Some(frame)) if wanted(&frame) => return Some(frame),
                    Ok(Some(frame)) => seen.push(frame),
                    Ok(None) | Err(_) => return None,
                }
            }
        })
        .await;
        (found, seen)
    }

    /// Reads until the peer closes the connection, returning how it ended and any bytes
    /// that came first (an answer written before the close, or none).
    ///
    /// # Panics
    ///
    /// When the connection is still open at the deadline.
    pub async fn wait_for_close(&mut self, what: &str) -> (Closed, Vec<u8>) {
        let reader = &mut self.reader;
        let closed = within(what, DEADLINE, async {
            loop {
                match reader.fill().await {
                    Ok(true) => {}
                    Ok(false) => return Closed::Eof,
                    Err(e) => return Closed::Error(e),
                }
            }
        })
        .await;
        (closed, std::mem::take(&mut reader.buf))
    }

    /// Checks that the peer closed the connection with nothing more to read: the next read
    /// returns the end of the stream (or a reset).
    ///
    /// # Panics
    ///
    /// When bytes arrive instead, or the connection is still open at the deadline.
    pub async fn expect_closed(&mut self, what: &str) {
        let (_, extra) = self.wait_for_close(what).await;
        assert!(
            extra.is_empty(),
            "{what}: expected the connection to end, got more bytes: {:?}",
            String::from_utf8_lossy(&extra)
        );
    }
}

// === impl Reader ===

impl Reader {
    #[track_caller]
    fn expect_response(&self, read: io::Result<Option<RawResponse>>, what: &str) -> RawResponse {
        match read {
            Ok(Some(resp)) => resp,
            Ok(None) => panic!(
                "{what}: the connection ended before a whole response; read {:?}",
                String::from_utf8_lossy(&self.buf)
            ),
            Err(e) => panic!(
                "{what}: reading a response failed: {e}; read {:?}",
                String::from_utf8_lossy(&self.buf)
            ),
        }
    }

    async fn response(&mut self) -> io::Result<Option<RawResponse>> {
        let head_end = loop {
            if let Some(at) = find(&self.buf, b"\r\n\r\n") {
                break at;
            }
            if !self.fill().await? {
                return Ok(None);
            }
        };
        let head = String::from_utf8_lossy(&self.buf[..head_end]).into_owned();
        self.buf.drain(..head_end + 4);
        let mut lines = head.split("\r\n");
        let status_line = lines.next().unwrap_or_default();
        let status = status_line
            .strip_prefix("HTTP/1.1 ")
            .or_else(|| status_line.strip_prefix("HTTP/1.0 "))
            .and_then(|rest| rest.get(..3))
            .and_then(|code| code.parse().ok())
            .ok_or_else(|| {
                io::Error::new(
                    io::ErrorKind::InvalidData,
                    format!("not an HTTP/1.1 status line: {status_line:?}"),
                )
            })?;
        let headers: Vec<(String, String)> = lines
            .filter_map(|line| line.split_once(':'))
            .map(|(name, value)| (name.trim().to_ascii_lowercase(), value.trim().to_owned()))
            .collect();
        let mut resp = RawResponse {
            status,
            headers,
            body: Vec::new(),
        };
        let body = if (100..200).contains(&status) || status == 204 || status == 304 {
            Some(Vec::new())
        } else if resp
            .header("transfer-encoding")
            .is_some_and(|te| te.eq_ignore_ascii_case("chunked"))
        {
            self.read_chunked().await?
        } else if let Some(len) = resp.header("content-length") {
            let len: usize = len.parse().map_err(|_| {
                io::Error::new(io::ErrorKind::InvalidData, "invalid content-length")
            })?;
            self.read_exact_body(len).await?
        } else {
            // Delimited by the end of the connection.
            while self.fill().await? {}
            Some(std::mem::take(&mut self.buf))
        };
        match body {
            Some(body) => {
                resp.body = body;
                Ok(Some(resp))
            }
            None => Ok(None),
        }
    }

    async fn h2_frame(&mut self) -> io::Result<Option<H2Frame>> {
        loop {
            if self.buf.len() >= 9 {
                let len = usize::from(self.buf[0]) << 16
                    | usize::from(self.buf[1]) << 8
                    | usize::from(self.buf[2]);
                if self.buf.len() >= 9 + len {
                    let frame = H2Frame {
                        kind: self.buf[3],
                        flags: self.buf[4],
                        stream: u32::from_be_bytes([
                            self.buf[5],
                            self.buf[6],
                            self.buf[7],
                            self.buf[8],
                        ]) & 0x7fff_ffff,
                        payload: self.buf[9..9 + len].to_vec(),
                    };
                    self.buf.drain(..9 + len);
                    return Ok(Some(frame));
                }
            }
            if !self.fill().await? {
                return Ok(None);
            }
        }
    }

    /// Reads more bytes into the buffer; `false` at the end of the stream.
    async fn fill(&mut self) -> io::Result<bool> {
        let mut chunk = [0u8; 16 * 1024];
        let n = self.half.read(&mut chunk).await?;
        self.buf.extend_from_slice(&chunk[..n]);
        Ok(n > 0)
    }

    async fn read_exact_body(&mut self, len: usize) -> io::Result<Option<Vec<u8>>> {
        while self.buf.len() < len {
            if !self.fill().await? {
                return Ok(None);
            }
        }
        Ok(Some(self.buf.drain(..len).collect()))
    }

    async fn read_line(&mut self) -> io::Result<Option<String>> {
        loop {
            if let Some(at) = find(&self.buf, b"\r\n") {
                let line = String::from_utf8_lossy(&self.buf[..at]).into_owned();
                self.buf.drain(..at + 2);
                return Ok(Some(line));
            }
            if !self.fill().await? {
                return Ok(None);
            }
        }
    }

    async fn read_chunked(&mut self) -> io::Result<Option<Vec<u8>>> {
        let mut body = Vec::new();
        loop {
            let Some(line) = self.read_line().await? else {
                return Ok(None);
            };
            let size = line.split(';').next().unwrap_or_default().trim();
            let size = usize::from_str_radix(size, 16)
                .map_err(|_| io::Error::new(io::ErrorKind::InvalidData, "invalid chunk size"))?;
            if size == 0 {
                // Trailers, up to the empty line.
                loop {
                    match self.read_line().await? {
                        None => return Ok(None),
                        Some(line) if line.is_empty() => return Ok(Some(body)),
                        Some(_) => {}
                    }
                }
            }
            let Some(data) = self.read_exact_body(size + 2).await? else {
                return Ok(None);
            };
            body.extend_from_slice(&data[..size]);
        }
    }
}

// === impl RawResponse ===

impl RawResponse {
    /// The first value of header `name` (lower case).
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(n, _)| n == name)
            .map(|(_, v)| v.as_str())
    }

    /// The body as (lossy) UTF-8.
    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }
}

fn find(haystack: &[u8], needle: &[u8]) -> Option<usize> {
    haystack.windows(needle.len()).position(|w| w == needle)
}

/// Hand-encoded HTTP/2 (RFC 9113) frames and HPACK (RFC 7541) header blocks.
pub mod h2 {
    use super::H2Frame;

    /// The client connection preface.
    pub const PREFACE: &[u8] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";

    /// Frame type `HEADERS`.
    pub const HEADERS: u8 = 0x1;
    /// Frame type `RST_STREAM`.
    pub const RST_STREAM: u8 = 0x3;
    /// Frame type `SETTINGS`.
    pub const SETTINGS: u8 = 0x4;
    /// Frame type `GOAWAY`.
    pub const GOAWAY: u8 = 0x7;

    /// Flag `END_STREAM` (on `HEADERS` and `DATA`).
    pub const END_STREAM: u8 = 0x1;
    /// Flag `ACK` (on `SETTINGS` and `PING`).
    pub const ACK: u8 = 0x1;
    /// Flag `END_HEADERS`.
    pub const END_HEADERS: u8 = 0x4;

    /// Setting `SETTINGS_MAX_CONCURRENT_STREAMS`.
    pub const MAX_CONCURRENT_STREAMS: u16 = 0x3;

    /// Error code `CANCEL`.
    pub const CANCEL: u32 = 0x8;
    /// Error code `ENHANCE_YOUR_CALM`.
    pub const ENHANCE_YOUR_CALM: u32 = 0xb;

    /// A frame: the 9-byte header, then `payload`.
    ///
    /// # Panics
    ///
    /// When `payload` is longer than a frame may be (2^24 - 1 bytes).
    pub fn frame(kind: u8, flags: u8, stream: u32, payload: &[u8]) -> Vec<u8> {
        let len = u32::try_from(payload.len())
            .ok()
            .filter(|&len| len < 1 << 24)
            .expect("a frame payload under 16 MiB");
        let mut out = Vec::with_capacity(9 + payload.len());
        out.extend_from_slice(&len.to_be_bytes()[1..]);
        out.push(kind);
        out.push(flags);
        out.extend_from_slice(&(stream & 0x7fff_ffff).to_be_bytes());
        out.extend_from_slice(payload);
        out
    }

    /// A `SETTINGS` frame with `settings` (empty: the client's defaults).
    pub fn settings(settings: &[(u16, u32)]) -> Vec<u8> {
        let mut payload = Vec::with_capacity(settings.len() * 6);
        for (id, value) in settings {
            payload.extend_from_slice(&id.to_be_bytes());
            payload.extend_from_slice(&value.to_be_bytes());
        }
        frame(SETTINGS, 0, 0, &payload)
    }

    /// A `SETTINGS` acknowledgement.
    pub fn settings_ack() -> Vec<u8> {
        frame(SETTINGS, ACK, 0, &[])
    }

    /// An `RST_STREAM` frame for `stream` with `error`.
    pub fn rst_stream(stream: u32, error: u32) -> Vec<u8> {
        frame(RST_STREAM, 0, stream, &error.to_be_bytes())
    }

    /// The HPACK block of `GET /` over `http` to `authority`, with the `headers` added: the
    /// pseudo-headers from the static table (`:method GET` 0x82, `:scheme http` 0x86,
    /// `:path /` 0x84), `:authority` as a literal without indexing on static name 1, each
    /// other header as a literal without indexing with a new name. Nothing goes into the
    /// dynamic table, so every block stands alone.
    ///
    /// # Panics
    ///
    /// When a name or value is 127 bytes or longer (the encoding here has no multi-byte
    /// lengths).
    pub fn get_block(authority: &str, headers: &[(&str, &str)]) -> Vec<u8> {
        let mut block = vec![0x82, 0x86, 0x84, 0x01];
        push_string(&mut block, authority);
        for (name, value) in headers {
            block.push(0x00);
            push_string(&mut block, name);
            push_string(&mut block, value);
        }
        block
    }

    /// A `HEADERS` frame (`END_HEADERS | END_STREAM`) opening `stream` with `block`.
    pub fn headers(stream: u32, block: &[u8]) -> Vec<u8> {
        frame(HEADERS, END_HEADERS | END_STREAM, stream, block)
    }

    fn push_string(out: &mut Vec<u8>, text: &str) {
        let len = u8::try_from(text.len())
            .ok()
            .filter(|&len| len < 0x7f)
            .expect("an HPACK string under 127 bytes");
        out.push(len);
        out.extend_from_slice(text.as_bytes());
    }

    /// The `(id, value)` pairs of a `SETTINGS` frame's payload.
    pub fn settings_of(frame: &H2Frame) -> Vec<(u16, u32)> {
        frame
            .payload
            .chunks_exact(6)
            .map(|s| {
                (
                    u16::from_be_bytes([s[0], s[1]]),
                    u32::from_be_bytes([s[2], s[3], s[4], s[5]]),
                )
            })
            .collect()
    }

    /// The error code of a `GOAWAY` frame (`None` when the payload is too short).
    pub fn goaway_error(frame: &H2Frame) -> Option<u32> {
        let code = frame.payload.get(4..8)?;
        Some(u32::from_be_bytes([code[0], code[1], code[2], code[3]]))
    }

    /// A short description of `frames` (type, flags, stream, and for `GOAWAY` and
    /// `RST_STREAM` the error code), for failure messages.
    pub fn describe(frames: &[H2Frame]) -> String {
        frames
            .iter()
            .map(|f| {
                let name = match f.kind {
                    0x0 => "DATA",
                    HEADERS => "HEADERS",
                    RST_STREAM => "RST_STREAM",
                    SETTINGS => "SETTINGS",
                    0x6 => "PING",
                    GOAWAY => "GOAWAY",
                    0x8 => "WINDOW_UPDATE",
                    _ => "OTHER",
                };
                let code = match f.kind {
                    GOAWAY => goaway_error(f).map(|c| format!(" error=0x{c:x}")),
                    RST_STREAM => f.payload.get(..4).map(|c| {
                        format!(
                            " error=0x{:x}",
                            u32::from_be_bytes([c[0], c[1], c[2], c[3]])
                        )
                    }),
                    _ => None,
                };
                format!(
                    "{name}(type=0x{:x} flags=0x{:x} stream={}{})",
                    f.kind,
                    f.flags,
                    f.stream,
                    code.unwrap_or_default()
                )
            })
            .collect::<Vec<_>>()
            .join(", ")
    }
}
