//! The input format of the targets that take a request: an HTTP/1-style head, so that the
//! seed corpus is made of real request heads a person can read and write.
//!
//! ```text
//! METHOD SP TARGET [SP VERSION] LF
//! NAME ":" VALUE LF           (any number of lines; CR before LF is dropped)
//! LF
//! BODY                        (the rest, as is)
//! ```
//!
//! This is not an HTTP parser (hyper's is not what is fuzzed here): names and values are
//! the raw bytes between the separators, and whatever `http` refuses is skipped, one header
//! at a time, so the rest of the input still reaches the code under test.

use http::{HeaderName, HeaderValue, Method, Request, Uri, Version};

/// A request head split out of fuzz input.
#[derive(Debug)]
pub struct Head<'a> {
    /// The first token of the request line.
    pub method: &'a [u8],
    /// The second token: origin-form, absolute-form, authority-form or `*`.
    pub target: &'a [u8],
    /// The third token (`HTTP/1.1` when absent or unknown).
    pub version: &'a [u8],
    /// Header lines, split at the first `:`, the value trimmed of spaces and tabs.
    pub headers: Vec<(&'a [u8], &'a [u8])>,
    /// Everything after the empty line.
    pub body: &'a [u8],
}

/// Splits fuzz input into a head and a body (never fails: missing parts are empty).
pub fn split(data: &[u8]) -> Head<'_> {
    let mut rest = data;
    let mut next_line = || {
        if rest.is_empty() {
            return None;
        }
        let (line, tail) = match rest.iter().position(|&b| b == b'\n') {
            Some(i) => (&rest[..i], &rest[i + 1..]),
            None => (rest, &rest[rest.len()..]),
        };
        rest = tail;
        Some(line.strip_suffix(b"\r").unwrap_or(line))
    };
    let request_line = next_line().unwrap_or_default();
    let mut tokens = request_line
        .split(|&b| b == b' ')
        .filter(|token| !token.is_empty());
    let method = tokens.next().unwrap_or_default();
    let target = tokens.next().unwrap_or_default();
    let version = tokens.next().unwrap_or_default();
    let mut headers = Vec::new();
    while let Some(line) = next_line() {
        if line.is_empty() {
            break;
        }
        let Some(colon) = line.iter().position(|&b| b == b':') else {
            continue;
        };
        headers.push((&line[..colon], line[colon + 1..].trim_ascii()));
    }
    Head {
        method,
        target,
        version,
        headers,
        body: rest,
    }
}

impl Head<'_> {
    /// The HTTP version named on the request line.
    pub fn version(&self) -> Version {
        match self.version {
            b"HTTP/0.9" => Version::HTTP_09,
            b"HTTP/1.0" => Version::HTTP_10,
            b"HTTP/2" | b"HTTP/2.0" => Version::HTTP_2,
            b"HTTP/3" | b"HTTP/3.0" => Version::HTTP_3,
            _ => Version::HTTP_11,
        }
    }

    /// An `http::Request` with this head and `body`: `None` when `http` refuses the method
    /// or the URI; a header it refuses is left out.
    pub fn request<B>(&self, body: B) -> Option<Request<B>> {
        let method = Method::from_bytes(self.method).ok()?;
        let uri = Uri::try_from(self.target).ok()?;
        let mut request = Request::new(body);
        *request.method_mut() = method;
        *request.uri_mut() = uri;
        *request.version_mut() = self.version();
        let headers = request.headers_mut();
        for &(name, value) in &self.headers {
            if let (Ok(name), Ok(value)) =
                (HeaderName::from_bytes(name), HeaderValue::from_bytes(value))
            {
                headers.append(name, value);
            }
        }
        Some(request)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_head_is_split_into_its_parts() {
        let head = split(b"POST /v1/x HTTP/2\r\nX-A: 1\r\nbad line\r\nx-b:\t two \r\n\r\n{}\n");
        assert_eq!(head.method, b"POST");
        assert_eq!(head.target, b"/v1/x");
        assert_eq!(head.version(), Version::HTTP_2);
        assert_eq!(
            head.headers,
            vec![(&b"X-A"[..], &b"1"[..]), (b"x-b", b"two")]
        );
        assert_eq!(head.body, b"{}\n");
        let req = head.request(()).unwrap();
        assert_eq!(req.headers()["x-a"], "1");
    }

    #[test]
    fn refused_parts_are_skipped() {
        assert!(split(b"").request(()).is_none());
        assert!(split(b"G\x00T / HTTP/1.1\n").request(()).is_none());
        let req = split(b"GET / HTTP/1.1\nx\x01y: 1\nok: \x7f\nok: 2\n")
            .request(())
            .unwrap();
        assert_eq!(req.headers().len(), 1);
        assert_eq!(req.headers()["ok"], "2");
    }
}
