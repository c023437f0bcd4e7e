//! A small blocking AnyConnect probe client for refusal tests: it speaks just enough of the
//! protocol (anyconnect.md §1-3) to do what a well-behaved client never does — pick a group
//! that does not exist, present a forged or stale cookie, break the CSTP framing — and reports
//! exactly what the gateway answered.
//!
//! TLS is the openssl crate with the lab's server certificate as the only trust anchor and the
//! certificate's name checked, so a probe can only talk to the gateway under test. Sockets are
//! opened inside a lab network namespace ([`Probe::connect`]); everything after that is plain
//! blocking I/O with read timeouts.

use crate::{io_err, LabError, Result};
use openssl::ssl::{ErrorCode, SslConnector, SslMethod, SslStream, SslVerifyMode};
use std::io::Write;
use std::net::{SocketAddr, TcpStream};
use std::path::Path;
use std::time::{Duration, Instant};

/// The name in the lab's server certificate (`make_server_cert`: `/CN=vpn.example`).
pub const SERVER_NAME: &str = "vpn.example";

/// CSTP frame types (anyconnect.md §3).
pub const CSTP_DATA: u8 = 0x00;
pub const CSTP_DPD_REQ: u8 = 0x03;
pub const CSTP_DPD_RESP: u8 = 0x04;
pub const CSTP_DISCONNECT: u8 = 0x05;
pub const CSTP_KEEPALIVE: u8 = 0x07;
pub const CSTP_TERMINATE: u8 = 0x09;

/// One HTTP answer from the gateway.
#[derive(Debug, Clone)]
pub struct Answer {
    pub status: u16,
    pub reason: String,
    pub headers: Vec<(String, String)>,
    pub body: String,
}

impl Answer {
    /// First header `name` (case-insensitive).
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers.iter().find(|(k, _)| k.eq_ignore_ascii_case(name)).map(|(_, v)| v.as_str())
    }

    /// Value of cookie `name` from the `Set-Cookie` headers (empty values count as absent:
    /// a server clears a cookie by setting it empty).
    pub fn set_cookie(&self, name: &str) -> Option<String> {
        self.headers
            .iter()
            .filter(|(k, _)| k.eq_ignore_ascii_case("Set-Cookie"))
            .filter_map(|(_, v)| v.split(';').next()?.trim().strip_prefix(name)?.strip_prefix('=').map(str::to_string))
            .find(|v| !v.is_empty())
    }

    /// Text of the first `<tag ...>text</tag>` in the body.
    pub fn xml_text(&self, tag: &str) -> Option<String> {
        let open = format!("<{tag}");
        let start = self.body.find(&open)?;
        let after = start + self.body[start..].find('>')? + 1;
        let end = after + self.body[after..].find(&format!("</{tag}>"))?;
        Some(self.body[after..end].to_string())
    }

    /// The `type` attribute of `<config-auth>` (`auth-request`, `complete`, ...).
    pub fn config_auth_type(&self) -> Option<String> {
        let at = self.body.find("<config-auth")?;
        let head = &self.body[at..at + self.body[at..].find('>')?];
        let t = head.split("type=\"").nth(1)?;
        Some(t[..t.find('"')?].to_string())
    }
}

/// What a two-step password login produced.
#[derive(Debug, Clone)]
pub struct Login {
    /// Answer to the `init` post (normally the login form).
    pub form: Answer,
    /// Answer to the `auth-reply` post; `None` when the form already ended the exchange.
    pub reply: Option<Answer>,
    /// The `webvpn` session cookie, when the login completed.
    pub cookie: Option<String>,
}

/// How a tunnel connection ended from the probe's point of view.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Ending {
    /// CSTP frame types received before the end.
    pub frames: Vec<u8>,
    /// True when the gateway closed the connection (close_notify, EOF or reset) within the
    /// wait; false when it was still open at the deadline.
    pub closed: bool,
}

/// A TLS connection to the gateway.
pub struct Probe {
    tls: SslStream<TcpStream>,
    /// Bytes read past the last HTTP answer (the start of the CSTP stream after CONNECT).
    buf: Vec<u8>,
    host: String,
}

impl Probe {
    /// TCP from inside network namespace `ns` to `server`, then a TLS handshake that trusts
    /// only `server_cert` and checks the name [`SERVER_NAME`].
    pub fn connect(ns: &str, server: SocketAddr, server_cert: &Path) -> Result<Probe> {
        let tcp = tcp_in_ns(ns, server, Duration::from_secs(5))?;
        tcp.set_read_timeout(Some(Duration::from_secs(10))).map_err(io_err("setting a read timeout"))?;
        tcp.set_write_timeout(Some(Duration::from_secs(10))).map_err(io_err("setting a write timeout"))?;
        let tls_err = |what: &str, e: &dyn std::fmt::Display| LabError::Check(format!("probe TLS {what}: {e}"));
        let mut b = SslConnector::builder(SslMethod::tls_client()).map_err(|e| tls_err("context", &e))?;
        b.set_verify(SslVerifyMode::PEER);
        b.set_ca_file(server_cert).map_err(|e| tls_err("trust anchor", &e))?;
        let conn = b.build();
        let tls = conn.connect(SERVER_NAME, tcp).map_err(|e| tls_err("handshake", &e))?;
        Ok(Probe { tls, buf: Vec::new(), host: server.ip().to_string() })
    }

    /// TLS version and cipher the handshake settled on (e.g. `TLSv1.3 TLS_AES_256_GCM_SHA384`).
    pub fn tls_params(&self) -> String {
        let s = self.tls.ssl();
        format!("{} {}", s.version_str(), s.current_cipher().map_or("?", |c| c.name()))
    }

    /// POSTs an aggregate-auth document to `/` with openconnect 9.01's headers
    /// (anyconnect.md §1), with the `webvpncontext` cookie when given.
    pub fn post_xml(&mut self, xml: &str, context: Option<&str>) -> Result<Answer> {
        let cookie = context.map(|c| format!("Cookie: webvpncontext={c}\r\n")).unwrap_or_default();
        let req = format!(
            "POST / HTTP/1.1\r\nHost: {}\r\nUser-Agent: Open AnyConnect VPN Agent v9.01\r\nAccept: */*\r\n\
             Accept-Encoding: identity\r\nX-Transcend-Version: 1\r\nX-Aggregate-Auth: 1\r\nX-Support-HTTP-Auth: true\r\n\
             {cookie}Content-Type: application/xml; charset=utf-8\r\nContent-Length: {}\r\n\r\n{xml}",
            self.host,
            xml.len()
        );
        self.write_all(req.as_bytes())?;
        self.read_answer(true)
    }

    /// The password login: `init` (with `<group-select>` and `<group-access>` when given), then
    /// `auth-reply` with the credentials and the handle from the form. Stops after the first
    /// answer when it is not a login form.
    pub fn login(&mut self, user: &str, password: &str, group_select: Option<&str>, group_access: Option<&str>) -> Result<Login> {
        let form = self.post_xml(&init_xml(&self.host, group_select, group_access), None)?;
        if form.status != 200 || form.config_auth_type().as_deref() != Some("auth-request") {
            let cookie = form.set_cookie("webvpn");
            return Ok(Login { form, reply: None, cookie });
        }
        let handle = form.xml_text("aggauth-handle").unwrap_or_default();
        let tunnel_group = form.xml_text("tunnel-group").unwrap_or_default();
        let context = form.set_cookie("webvpncontext");
        let xml = reply_xml(user, password, &handle, &tunnel_group, group_select);
        let reply = self.post_xml(&xml, context.as_deref())?;
        let cookie = reply.set_cookie("webvpn");
        Ok(Login { form, reply: Some(reply), cookie })
    }

    /// `CONNECT /CSCOSSLC/tunnel` with `Cookie: webvpn=<cookie>` and openconnect's CSTP
    /// headers (TLS only: no DTLS offered). On `200 CONNECTED` the connection now carries CSTP.
    pub fn tunnel(&mut self, cookie: &str) -> Result<Answer> {
        let req = format!(
            "CONNECT /CSCOSSLC/tunnel HTTP/1.1\r\nHost: {}\r\nUser-Agent: Open AnyConnect VPN Agent v9.01\r\n\
             Cookie: webvpn={cookie}\r\nX-CSTP-Version: 1\r\nX-CSTP-Hostname: acprobe\r\nX-CSTP-Base-MTU: 1500\r\n\
             X-CSTP-MTU: 1390\r\nX-CSTP-Address-Type: IPv4\r\nX-CSTP-Full-IPv6-Capability: false\r\n\r\n",
            self.host
        );
        self.write_all(req.as_bytes())?;
        self.read_answer(false)
    }

    /// Writes raw bytes into the TLS stream (CSTP frames, or anything else).
    pub fn send_raw(&mut self, bytes: &[u8]) -> Result<()> {
        self.write_all(bytes)
    }

    /// Ends the connection from our side: TLS close_notify, then the TCP connection closes
    /// when the probe is dropped.
    pub fn close(mut self) {
        let _ = self.tls.shutdown();
        let _ = self.tls.get_ref().shutdown(std::net::Shutdown::Both);
    }

    /// Reads CSTP frames until the gateway closes the connection or `timeout` passes; answers
    /// nothing (a DPD request stays unanswered).
    pub fn wait_closed(&mut self, timeout: Duration) -> Ending {
        let deadline = Instant::now() + timeout;
        let mut frames = Vec::new();
        let mut chunk = [0u8; 16 * 1024];
        loop {
            // Whole frames out of the buffer: 'S' 'T' 'F' 1, length, type, 0 (anyconnect.md §3).
            while self.buf.len() >= 8 && self.buf.starts_with(b"STF\x01") {
                let len = usize::from(u16::from_be_bytes([self.buf[4], self.buf[5]]));
                if self.buf.len() < 8 + len {
                    break;
                }
                frames.push(self.buf[6]);
                self.buf.drain(..8 + len);
            }
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return Ending { frames, closed: false };
            }
            let _ = self.tls.get_ref().set_read_timeout(Some(left.max(Duration::from_millis(10))));
            match self.tls.ssl_read(&mut chunk) {
                Ok(0) => return Ending { frames, closed: true },
                Ok(n) => self.buf.extend_from_slice(&chunk[..n]),
                Err(e) if e.code() == ErrorCode::ZERO_RETURN => return Ending { frames, closed: true },
                Err(e) if is_timeout(&e) => continue,
                // A reset or a TLS alert: closed by the other side all the same.
                Err(_) => return Ending { frames, closed: true },
            }
        }
    }

    fn write_all(&mut self, mut bytes: &[u8]) -> Result<()> {
        while !bytes.is_empty() {
            let n = self.tls.ssl_write(bytes).map_err(|e| LabError::Check(format!("probe write: {e}")))?;
            bytes = &bytes[n..];
        }
        self.tls.flush().map_err(io_err("probe flush"))
    }

    /// Reads one HTTP answer. `with_body`: framed by Content-Length (absent = none); a CONNECT
    /// answer has no body and what follows it stays in the buffer.
    fn read_answer(&mut self, with_body: bool) -> Result<Answer> {
        let deadline = Instant::now() + Duration::from_secs(15);
        let head_end = loop {
            if let Some(p) = find(&self.buf, b"\r\n\r\n") {
                break p + 4;
            }
            self.fill(deadline)?;
        };
        let head = String::from_utf8_lossy(&self.buf[..head_end]).into_owned();
        let mut lines = head.split("\r\n");
        let status_line = lines.next().unwrap_or_default();
        let mut parts = status_line.splitn(3, ' ');
        let version = parts.next().unwrap_or_default();
        let status = parts.next().and_then(|s| s.parse::<u16>().ok());
        let (true, Some(status)) = (version.starts_with("HTTP/1."), status) else {
            return Err(LabError::Check(format!("probe: not an HTTP answer: {status_line:?}")));
        };
        let reason = parts.next().unwrap_or_default().to_string();
        let headers: Vec<(String, String)> = lines
            .filter(|l| !l.is_empty())
            .filter_map(|l| l.split_once(':').map(|(k, v)| (k.trim().to_string(), v.trim().to_string())))
            .collect();
        let mut answer = Answer { status, reason, headers, body: String::new() };
        self.buf.drain(..head_end);
        if with_body || status != 200 {
            let len: usize = answer.header("Content-Length").and_then(|v| v.parse().ok()).unwrap_or(0);
            while self.buf.len() < len {
                if self.fill(deadline).is_err() {
                    break; // a closing refusal may end early; keep what came
                }
            }
            let take = len.min(self.buf.len());
            answer.body = String::from_utf8_lossy(&self.buf[..take]).into_owned();
            self.buf.drain(..take);
        }
        Ok(answer)
    }

    fn fill(&mut self, deadline: Instant) -> Result<()> {
        let mut chunk = [0u8; 16 * 1024];
        loop {
            if Instant::now() >= deadline {
                return Err(LabError::Timeout { what: "probe waiting for an HTTP answer".into(), after: Duration::from_secs(15) });
            }
            match self.tls.ssl_read(&mut chunk) {
                Ok(0) => return Err(LabError::Check("probe: connection closed before a complete answer".into())),
                Ok(n) => {
                    self.buf.extend_from_slice(&chunk[..n]);
                    return Ok(());
                }
                Err(e) if e.code() == ErrorCode::ZERO_RETURN => {
                    return Err(LabError::Check("probe: connection closed before a complete answer".into()))
                }
                Err(e) if is_timeout(&e) => continue,
                Err(e) => return Err(LabError::Check(format!("probe read: {e}"))),
            }
        }
    }
}

/// A CSTP frame: the 8-byte header (anyconnect.md §3) with `announced` as its length field,
/// followed by `payload` (which may be shorter or longer than announced).
pub fn cstp_frame(ty: u8, announced: u16, payload: &[u8]) -> Vec<u8> {
    let mut f = Vec::with_capacity(8 + payload.len());
    f.extend_from_slice(b"STF\x01");
    f.extend_from_slice(&announced.to_be_bytes());
    f.push(ty);
    f.push(0);
    f.extend_from_slice(payload);
    f
}

/// The `init` document in openconnect 9.01's shape.
pub fn init_xml(host: &str, group_select: Option<&str>, group_access: Option<&str>) -> String {
    let access = group_access.map_or_else(|| format!("https://{host}/"), str::to_string);
    let select = group_select.map(|g| format!("<group-select>{}</group-select>\n", escape(g))).unwrap_or_default();
    format!(
        "<?xml version=\"1.0\" encoding=\"UTF-8\"?>\n<config-auth client=\"vpn\" type=\"init\" aggregate-auth-version=\"2\">\n\
         <version who=\"vpn\">v9.01</version>\n<device-id>linux-64</device-id>\n{select}<group-access>{}</group-access>\n\
         <capabilities><auth-method>single-sign-on-v2</auth-method><auth-method>multiple-cert</auth-method></capabilities>\n\
         </config-auth>\n",
        escape(&access)
    )
}

/// The `auth-reply` document in openconnect 9.01's shape.
pub fn reply_xml(user: &str, password: &str, handle: &str, tunnel_group: &str, group_select: Option<&str>) -> String {
    let select = group_select.map(|g| format!("<group-select>{}</group-select>\n", escape(g))).unwrap_or_default();
    format!(
        "<?xml version=\"1.0\" encoding=\"UTF-8\"?>\n<config-auth client=\"vpn\" type=\"auth-reply\" aggregate-auth-version=\"2\">\n\
         <version who=\"vpn\">v9.01</version>\n<device-id>linux-64</device-id>\n<session-token/>\n<session-id/>\n\
         <opaque is-for=\"sg\">\n<tunnel-group>{}</tunnel-group>\n<aggauth-handle>{}</aggauth-handle>\n</opaque>\n\
         <auth><username>{}</username><password>{}</password></auth>\n{select}</config-auth>\n",
        escape(tunnel_group),
        escape(handle),
        escape(user),
        escape(password)
    )
}

fn escape(s: &str) -> String {
    s.replace('&', "&amp;").replace('<', "&lt;").replace('>', "&gt;").replace('"', "&quot;").replace('\'', "&apos;")
}

fn find(hay: &[u8], needle: &[u8]) -> Option<usize> {
    hay.windows(needle.len()).position(|w| w == needle)
}

fn is_timeout(e: &openssl::ssl::Error) -> bool {
    e.io_error().is_some_and(|io| matches!(io.kind(), std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut))
}

/// A TCP connection opened from inside network namespace `ns` (on a short-lived thread that
/// entered it: namespaces are per thread; the socket stays in the namespace it was made in).
pub fn tcp_in_ns(ns: &str, to: SocketAddr, timeout: Duration) -> Result<TcpStream> {
    let path = format!("/run/netns/{ns}");
    std::thread::spawn(move || -> Result<TcpStream> {
        let file = std::fs::File::open(&path).map_err(io_err(format!("opening {path}")))?;
        use std::os::fd::AsRawFd;
        // SAFETY: setns(2) on this fresh thread only, with the fd of a namespace file that stays
        // open for the call.
        let rc = unsafe { libc::setns(file.as_raw_fd(), libc::CLONE_NEWNET) };
        if rc != 0 {
            return Err(LabError::Io { what: format!("setns into {path}"), source: std::io::Error::last_os_error() });
        }
        TcpStream::connect_timeout(&to, timeout).map_err(io_err(format!("TCP connect to {to}")))
    })
    .join()
    .map_err(|_| LabError::Check("namespace thread panicked".into()))?
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn answer_helpers_read_what_the_gateway_sends() {
        let a = Answer {
            status: 200,
            reason: "OK".into(),
            headers: vec![
                ("Set-Cookie".into(), "webvpncontext=; expires=Thu, 01 Jan 1970 22:00:00 GMT; path=/; Secure".into()),
                ("set-cookie".into(), "webvpn=ABCDEF; Secure; HttpOnly".into()),
            ],
            body: "<?xml version=\"1.0\"?>\n<config-auth client=\"vpn\" type=\"complete\">\n<session-token>ABCDEF</session-token>\n</config-auth>".into(),
        };
        assert_eq!(a.set_cookie("webvpn").as_deref(), Some("ABCDEF"));
        assert_eq!(a.set_cookie("webvpncontext"), None, "an emptied cookie is absent");
        assert_eq!(a.config_auth_type().as_deref(), Some("complete"));
        assert_eq!(a.xml_text("session-token").as_deref(), Some("ABCDEF"));
        assert_eq!(a.xml_text("error"), None);
    }

    #[test]
    fn frames_and_documents() {
        assert_eq!(cstp_frame(CSTP_DATA, 3, b"abc"), b"STF\x01\x00\x03\x00\x00abc");
        assert_eq!(&cstp_frame(CSTP_DPD_REQ, 1000, b"")[4..8], &[0x03, 0xe8, CSTP_DPD_REQ, 0]);
        let r = reply_xml("u<", "p&", "h", "RA", Some("X"));
        assert!(r.contains("<username>u&lt;</username><password>p&amp;</password>") && r.contains("<group-select>X</group-select>"));
        assert!(init_xml("192.0.2.1", None, None).contains("<group-access>https://192.0.2.1/</group-access>"));
    }
}
