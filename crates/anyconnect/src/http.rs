//! A deliberately small HTTP/1.1 request parser and response builder for the pre-tunnel
//! exchange. Bounded before anything is allocated: the head must end within [`MAX_HEAD`]
//! bytes, the body is at most [`MAX_BODY`] bytes and framed by Content-Length only (RFC 9112
//! §6.3; chunked and any Transfer-Encoding are refused, which also rules out request
//! smuggling through conflicting framing, RFC 9112 §6.1).

/// Largest request head (request line + headers + blank line).
pub const MAX_HEAD: usize = 16 * 1024;
/// Largest request body.
pub const MAX_BODY: usize = 64 * 1024;
/// Most header fields in one request.
pub const MAX_HEADERS: usize = 64;

/// Why a request is malformed or refused. Each maps to one status code in [`HttpError::status`].
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum HttpError {
    #[error("request head exceeds {MAX_HEAD} bytes")]
    HeadTooLarge,
    #[error("request body of {0} bytes exceeds {MAX_BODY}")]
    BodyTooLarge(u64),
    #[error("malformed request line")]
    BadRequestLine,
    #[error("unsupported HTTP version")]
    BadVersion,
    #[error("malformed header line")]
    BadHeader,
    #[error("more than {MAX_HEADERS} header fields")]
    TooManyHeaders,
    #[error("malformed Content-Length")]
    BadContentLength,
    #[error("conflicting Content-Length fields")]
    ConflictingContentLength,
    #[error("Transfer-Encoding is not supported")]
    TransferEncoding,
    #[error("control character in request")]
    ControlChar,
}

impl HttpError {
    /// RFC 9110 status for the refusal.
    pub fn status(&self) -> (u16, &'static str) {
        match self {
            Self::HeadTooLarge => (431, "Request Header Fields Too Large"),
            Self::TooManyHeaders => (431, "Request Header Fields Too Large"),
            Self::BodyTooLarge(_) => (413, "Content Too Large"),
            Self::BadVersion => (505, "HTTP Version Not Supported"),
            Self::TransferEncoding => (501, "Not Implemented"),
            _ => (400, "Bad Request"),
        }
    }
}

/// A parsed request borrowing the input buffer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Request<'a> {
    pub method: &'a str,
    pub target: &'a str,
    /// `HTTP/1.0` requests close after the response unless they ask for keep-alive.
    pub http10: bool,
    pub headers: Vec<(&'a str, &'a str)>,
    pub body: &'a [u8],
    /// Bytes of the buffer this request occupies (head + body).
    pub len: usize,
}

impl<'a> Request<'a> {
    /// First header field named `name` (case-insensitive, RFC 9110 §5.1).
    pub fn header(&self, name: &str) -> Option<&'a str> {
        self.headers
            .iter()
            .find(|(k, _)| k.eq_ignore_ascii_case(name))
            .map(|(_, v)| *v)
    }

    /// The value of cookie `name` from any Cookie header (RFC 6265 §5.4 `a=b; c=d`).
    pub fn cookie(&self, name: &str) -> Option<&'a str> {
        self.headers
            .iter()
            .filter(|(k, _)| k.eq_ignore_ascii_case("cookie"))
            .flat_map(|(_, v)| v.split(';'))
            .filter_map(|kv| kv.trim().split_once('='))
            .find(|(k, _)| *k == name)
            .map(|(_, v)| v)
    }

    /// Whether the client wants the connection closed after the response.
    pub fn wants_close(&self) -> bool {
        let conn = self.header("connection").unwrap_or("");
        let has = |t: &str| conn.split(',').any(|x| x.trim().eq_ignore_ascii_case(t));
        if self.http10 {
            !has("keep-alive")
        } else {
            has("close")
        }
    }
}

/// Parses one request from the start of `buf`. `Ok(None)`: incomplete, read more. Errors are
/// reported as early as the bytes allow (a binary blob fails on its first bytes, not after
/// 16 KiB).
pub fn parse(buf: &[u8]) -> Result<Option<Request<'_>>, HttpError> {
    let Some(head_end) = find_head_end(buf) else {
        precheck_partial(buf)?;
        if buf.len() >= MAX_HEAD {
            return Err(HttpError::HeadTooLarge);
        }
        return Ok(None);
    };
    let head_len = head_end + 4;
    if head_len > MAX_HEAD {
        return Err(HttpError::HeadTooLarge);
    }
    let head = &buf[..head_end];
    if head.iter().any(|&b| is_bad_control(b)) {
        return Err(HttpError::ControlChar);
    }
    let mut lines = crlf_lines(head);
    let request_line = std::str::from_utf8(lines.next().unwrap_or(b"")).map_err(|_| HttpError::BadRequestLine)?;
    let (method, target, http10) = parse_request_line(request_line)?;
    let mut headers = Vec::new();
    let mut content_length: Option<u64> = None;
    let mut fields = 0;
    for line in lines {
        fields += 1;
        if fields > MAX_HEADERS {
            return Err(HttpError::TooManyHeaders);
        }
        // Header values are opaque octets (RFC 9110 §5.5: obs-text); Cisco clients may send
        // a hostname or device name in a legacy code page. Such a value is dropped rather
        // than refusing the request, unless it frames the message.
        let Some((name, value)) = parse_header_line(line)? else { continue };
        if name.eq_ignore_ascii_case("transfer-encoding") {
            return Err(HttpError::TransferEncoding);
        }
        if name.eq_ignore_ascii_case("content-length") {
            let n = parse_content_length(value)?;
            if content_length.is_some_and(|c| c != n) {
                return Err(HttpError::ConflictingContentLength);
            }
            content_length = Some(n);
        }
        headers.push((name, value));
    }
    let cl = content_length.unwrap_or(0);
    if cl > MAX_BODY as u64 {
        return Err(HttpError::BodyTooLarge(cl));
    }
    let cl = cl as usize; // <= MAX_BODY
    if buf.len() < head_len + cl {
        return Ok(None);
    }
    Ok(Some(Request {
        method,
        target,
        http10,
        headers,
        body: &buf[head_len..head_len + cl],
        len: head_len + cl,
    }))
}

fn find_head_end(buf: &[u8]) -> Option<usize> {
    let lim = buf.len().min(MAX_HEAD + 4);
    buf[..lim].windows(4).position(|w| w == b"\r\n\r\n")
}

/// CTLs other than HTAB, CR, LF never appear in a valid head (RFC 9110 §5.5).
fn is_bad_control(b: u8) -> bool {
    (b < 0x20 && b != b'\t' && b != b'\r' && b != b'\n') || b == 0x7f
}

fn precheck_partial(buf: &[u8]) -> Result<(), HttpError> {
    let lim = &buf[..buf.len().min(MAX_HEAD)];
    if lim.iter().any(|&b| is_bad_control(b)) {
        return Err(HttpError::ControlChar);
    }
    // The method is a token; anything else before the first space is not HTTP.
    for &b in lim.iter().take(32) {
        if b == b' ' {
            break;
        }
        if !is_tchar(b) {
            return Err(HttpError::BadRequestLine);
        }
    }
    if let Some(eol) = lim.windows(2).position(|w| w == b"\r\n") {
        let line = std::str::from_utf8(&lim[..eol]).map_err(|_| HttpError::BadRequestLine)?;
        parse_request_line(line)?;
    } else if lim.len() > 8 * 1024 {
        // A request line longer than 8 KiB (RFC 9112 §3 recommends supporting 8000 octets).
        return Err(HttpError::BadRequestLine);
    }
    Ok(())
}

fn parse_request_line(line: &str) -> Result<(&str, &str, bool), HttpError> {
    let mut it = line.split(' ');
    let (Some(m), Some(t), Some(v), None) = (it.next(), it.next(), it.next(), it.next()) else {
        return Err(HttpError::BadRequestLine);
    };
    if m.is_empty() || m.len() > 16 || !m.bytes().all(is_tchar) {
        return Err(HttpError::BadRequestLine);
    }
    if t.is_empty() || !t.bytes().all(|b| b.is_ascii_graphic()) {
        return Err(HttpError::BadRequestLine);
    }
    let http10 = match v {
        "HTTP/1.1" => false,
        "HTTP/1.0" => true,
        v if v.starts_with("HTTP/") => return Err(HttpError::BadVersion),
        _ => return Err(HttpError::BadRequestLine),
    };
    Ok((m, t, http10))
}

/// The lines of a request head, split at CRLF only (as `str::split("\r\n")` would).
fn crlf_lines(b: &[u8]) -> impl Iterator<Item = &[u8]> {
    let mut rest = Some(b);
    std::iter::from_fn(move || {
        let r = rest?;
        match r.windows(2).position(|w| w == b"\r\n") {
            Some(i) => {
                rest = r.get(i + 2..);
                r.get(..i)
            }
            None => {
                rest = None;
                Some(r)
            }
        }
    })
}

/// A header line as (name, value); `Ok(None)` for a value that is not UTF-8 in a header
/// that does not frame the message (dropped by the caller).
fn parse_header_line(line: &[u8]) -> Result<Option<(&str, &str)>, HttpError> {
    // Obsolete line folding (RFC 9112 §5.2) and a space before the colon (§5.1) are rejected.
    let colon = line.iter().position(|&b| b == b':').ok_or(HttpError::BadHeader)?;
    let (name, value) = (&line[..colon], &line[colon + 1..]);
    if name.is_empty() || !name.iter().all(|&b| is_tchar(b)) {
        return Err(HttpError::BadHeader);
    }
    // Token characters are ASCII.
    let name = std::str::from_utf8(name).map_err(|_| HttpError::BadHeader)?;
    match std::str::from_utf8(value) {
        Ok(v) => Ok(Some((name, v.trim_matches(|c| c == ' ' || c == '\t')))),
        Err(_) if name.eq_ignore_ascii_case("content-length") || name.eq_ignore_ascii_case("transfer-encoding") => {
            Err(HttpError::BadHeader)
        }
        Err(_) => Ok(None),
    }
}

fn parse_content_length(v: &str) -> Result<u64, HttpError> {
    if v.is_empty() || v.len() > 10 || !v.bytes().all(|b| b.is_ascii_digit()) {
        return Err(HttpError::BadContentLength);
    }
    v.parse().map_err(|_| HttpError::BadContentLength)
}

/// RFC 9110 §5.6.2 token characters.
fn is_tchar(b: u8) -> bool {
    b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b)
}

/// A response under construction.
#[derive(Debug, Clone)]
pub struct Response {
    status: u16,
    reason: &'static str,
    headers: Vec<(String, String)>,
    body: Vec<u8>,
    content_length: bool,
}

impl Response {
    pub fn new(status: u16, reason: &'static str) -> Self {
        Self {
            status,
            reason,
            headers: Vec::new(),
            body: Vec::new(),
            content_length: true,
        }
    }

    /// Adds a header. CR, LF and other controls are removed from the value so nothing taken
    /// from a request or the configuration can split the response.
    pub fn header(mut self, name: &str, value: impl AsRef<str>) -> Self {
        let v: String = value.as_ref().chars().filter(|c| !c.is_control()).collect();
        self.headers.push((name.to_string(), v));
        self
    }

    pub fn body(mut self, content_type: &str, body: impl Into<Vec<u8>>) -> Self {
        self.body = body.into();
        self.header("Content-Type", content_type)
    }

    /// A `200 CONNECTED` head has no Content-Length: the CSTP stream follows it.
    pub fn without_content_length(mut self) -> Self {
        self.content_length = false;
        self
    }

    pub fn to_bytes(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(256 + self.body.len());
        out.extend_from_slice(format!("HTTP/1.1 {} {}\r\n", self.status, self.reason).as_bytes());
        for (k, v) in &self.headers {
            out.extend_from_slice(k.as_bytes());
            out.extend_from_slice(b": ");
            out.extend_from_slice(v.as_bytes());
            out.extend_from_slice(b"\r\n");
        }
        if self.content_length {
            out.extend_from_slice(format!("Content-Length: {}\r\n", self.body.len()).as_bytes());
        }
        out.extend_from_slice(b"\r\n");
        out.extend_from_slice(&self.body);
        out
    }
}

/// The canned refusal for a parse error.
pub fn error_response(e: &HttpError) -> Vec<u8> {
    let (code, reason) = e.status();
    Response::new(code, reason)
        .header("Connection", "close")
        .body("text/plain", format!("{e}\n"))
        .to_bytes()
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    const INIT: &[u8] = b"POST / HTTP/1.1\r\nHost: vpn.example\r\nContent-Type: application/xml\r\nContent-Length: 5\r\nCookie: a=b; webvpncontext=XYZ\r\n\r\nhello";

    #[test]
    fn complete_request() {
        let r = parse(INIT).unwrap().unwrap();
        assert_eq!((r.method, r.target, r.http10), ("POST", "/", false));
        assert_eq!(r.header("content-TYPE"), Some("application/xml"));
        assert_eq!(r.cookie("webvpncontext"), Some("XYZ"));
        assert_eq!(r.cookie("webvpn"), None);
        assert_eq!(r.body, b"hello");
        assert_eq!(r.len, INIT.len());
        assert!(!r.wants_close());
    }

    #[test]
    fn every_prefix_needs_more_and_pipelined_tail_is_left() {
        for n in 0..INIT.len() {
            assert_eq!(parse(&INIT[..n]), Ok(None), "prefix {n}");
        }
        let mut two = INIT.to_vec();
        two.extend_from_slice(b"GET / HTTP/1.1\r\n");
        assert_eq!(parse(&two).unwrap().unwrap().len, INIT.len());
    }

    fn err(s: &[u8]) -> HttpError {
        parse(s).expect_err(&String::from_utf8_lossy(s))
    }

    #[test]
    fn malformed_shapes() {
        use HttpError::*;
        assert_eq!(err(b"POST  / HTTP/1.1\r\n\r\n"), BadRequestLine);
        assert_eq!(err(b"POST /\r\n\r\n"), BadRequestLine);
        assert_eq!(err(b"POST / HTTP/1.1 x\r\n\r\n"), BadRequestLine);
        assert_eq!(err(b"PO(ST / HTTP/1.1\r\n\r\n"), BadRequestLine);
        assert_eq!(err(b"POST / HTTP/2.0\r\n\r\n"), BadVersion);
        assert_eq!(err(b"POST / FTP/1.1\r\n\r\n"), BadRequestLine);
        assert_eq!(err(b"POST / HTTP/1.1\r\nNoColon\r\n\r\n"), BadHeader);
        assert_eq!(err(b"POST / HTTP/1.1\r\nBad Name: x\r\n\r\n"), BadHeader);
        assert_eq!(
            err(b"POST / HTTP/1.1\r\nA: b\r\n folded\r\n\r\n"),
            BadHeader
        );
        assert_eq!(err(b"POST / HTTP/1.1\r\n: empty\r\n\r\n"), BadHeader);
        assert_eq!(
            err(b"POST / HTTP/1.1\r\nContent-Length: -1\r\n\r\n"),
            BadContentLength
        );
        assert_eq!(
            err(b"POST / HTTP/1.1\r\nContent-Length: 1 2\r\n\r\n"),
            BadContentLength
        );
        assert_eq!(
            err(b"POST / HTTP/1.1\r\nContent-Length: \r\n\r\n"),
            BadContentLength
        );
        assert_eq!(
            err(b"POST / HTTP/1.1\r\nContent-Length: 99999999999\r\n\r\n"),
            BadContentLength
        );
        assert_eq!(
            err(b"POST / HTTP/1.1\r\nContent-Length: 1\r\nContent-Length: 2\r\n\r\n"),
            ConflictingContentLength
        );
        assert_eq!(
            err(b"POST / HTTP/1.1\r\nContent-Length: 65537\r\n\r\n"),
            BodyTooLarge(65537)
        );
        assert_eq!(
            err(b"POST / HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n"),
            TransferEncoding
        );
        assert_eq!(err(b"POST / HTTP/1.1\r\nA: \x01\r\n\r\n"), ControlChar);
        assert_eq!(err(b"\x16\x03\x01\x02\x00"), ControlChar); // a TLS ClientHello in the clear
        assert_eq!(err(b"\xff\xfe"), BadRequestLine);
        // A value that is not UTF-8 is dropped, unless it frames the message.
        let r = parse(b"POST / HTTP/1.1\r\nA: \xc3\x28\r\nX-CSTP-Hostname: caf\xe9\r\nB: ok\r\n\r\n").unwrap().unwrap();
        assert_eq!(r.headers, vec![("B", "ok")]);
        assert_eq!(err(b"POST / HTTP/1.1\r\nContent-Length: \xc3\x28\r\n\r\n"), BadHeader);
        assert_eq!(err(b"POST / HTTP/1.1\r\nTransfer-Encoding: \xff\r\n\r\n"), BadHeader);
        assert_eq!(err(b"POST / HTTP/1.1\r\nN\xe4me: x\r\n\r\n"), BadHeader);
        assert_eq!(err(b"P\xc3\xa4ST / HTTP/1.1\r\n\r\n"), BadRequestLine);
        let mut many = b"GET / HTTP/1.1\r\n".to_vec();
        for i in 0..=MAX_HEADERS {
            many.extend_from_slice(format!("H{i}: v\r\n").as_bytes());
        }
        many.extend_from_slice(b"\r\n");
        assert_eq!(err(&many), TooManyHeaders);
        let mut big = b"GET / HTTP/1.1\r\n".to_vec();
        while big.len() < MAX_HEAD {
            big.extend_from_slice(
                b"X-Pad: aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa\r\n",
            );
        }
        assert_eq!(err(&big), HeadTooLarge);
        big.extend_from_slice(b"\r\n");
        assert_eq!(err(&big), HeadTooLarge);
        assert_eq!(err(&[b'A'; 9000]), BadRequestLine);
    }

    #[test]
    fn duplicate_equal_content_length_is_fine_and_http10_closes() {
        let r = parse(b"POST / HTTP/1.0\r\nContent-Length: 1\r\ncontent-length: 1\r\n\r\nx")
            .unwrap()
            .unwrap();
        assert_eq!(r.body, b"x");
        assert!(r.wants_close());
    }

    #[test]
    fn response_strips_crlf_injection() {
        let b = Response::new(200, "OK")
            .header("X-A", "v\r\nInjected: 1")
            .body("text/plain", "hi")
            .to_bytes();
        assert_eq!(b, b"HTTP/1.1 200 OK\r\nX-A: vInjected: 1\r\nContent-Type: text/plain\r\nContent-Length: 2\r\n\r\nhi");
    }

    proptest! {
        #[test]
        fn never_panics_and_len_bounded(data in prop::collection::vec(any::<u8>(), 0..20000)) {
            if let Ok(Some(r)) = parse(&data) {
                prop_assert!(r.len <= data.len());
                prop_assert!(r.len <= MAX_HEAD + MAX_BODY);
            }
        }
    }
}
