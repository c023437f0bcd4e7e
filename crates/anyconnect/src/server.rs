//! The engine: sessions, the HTTP exchange, the tunnel data path and timers.

use std::collections::{BTreeSet, HashMap, VecDeque};
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::time::{Duration, Instant, SystemTime};

use ring::hmac;
use serde::{Deserialize, Serialize};
use wire::ip::{proto, Ipv4Packet, TcpPacket};

use crate::auth::{self, AuthForm, AuthKind, ClientAuth};
use crate::config::{AuthMethod, Config, TunnelGroup};
use crate::connect::{self, ConnectRequest, Connected, DtlsKeying};
use crate::cstp::{self, FrameType, DISCONNECT_LOGOUT};
use crate::housekeeping;
use crate::http::{self, Request, Response};
use crate::mtu::{self, MtuInputs};
use crate::session::{DtlsChannel, Fallback, Phase, Session, SessionSnapshot, TlsChannel};
use crate::text::{self, syslog, DisconnectReason, SessionInfo, Who};
use crate::{
    Channel, ConnInfo, Event, HttpOutcome, HttpReject, HttpStep, Logoff, PasswordCheck,
    PasswordTicket, SessionId, TimerReason, Transmit,
    TunDrop, TunPacket, TunnelError,
};

/// Engine counters (for `show` and metrics).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Stats {
    pub http_requests: u64,
    pub http_malformed: u64,
    pub auth_success: u64,
    pub auth_failures: u64,
    pub auth_unknown_group: u64,
    pub auth_pending_refused: u64,
    pub auth_rate_limited: u64,
    /// Password verdicts that came back for a login that was no longer waiting (expired,
    /// or a ticket of another connection).
    #[serde(default)]
    pub auth_stale_verdicts: u64,
    pub cookie_rejected: u64,
    pub tunnels: u64,
    pub reconnects: u64,
    pub cstp_errors: u64,
    pub dtls_bad_records: u64,
    pub packets_from_clients: u64,
    pub packets_to_clients: u64,
    pub fragmented: u64,
    pub too_big_dropped: u64,
    pub icmp_sent: u64,
    pub icmp_suppressed: u64,
    pub too_big_logs_suppressed: u64,
    pub sent_on_tls_too_big_for_dtls: u64,
    pub tun_no_session: u64,
    pub tun_no_channel: u64,
    pub fallbacks_to_tls: u64,
    pub returns_to_dtls: u64,
    pub mss_clamped: u64,
}

/// Minimum spacing of ICMP fragmentation-needed answers per session.
const TOO_BIG_ICMP_INTERVAL: Duration = Duration::from_millis(10);
/// Minimum spacing of 722036/602101 log pairs per session.
const TOO_BIG_LOG_INTERVAL: Duration = Duration::from_millis(100);

/// Everything needed to carry sessions across a restart or failover.
#[derive(Clone, Serialize, Deserialize)]
pub struct Snapshot {
    pub cookie_key: [u8; 32],
    pub next_index: u32,
    pub sessions: Vec<SessionSnapshot>,
}

impl Snapshot {
    /// The snapshot as it stands `downtime` after it was taken (the daemon measures the time
    /// it was away with the wall clock): every session is that much older, and every
    /// connected one has been without its connection for that long.
    pub fn aged(mut self, downtime: Duration) -> Snapshot {
        for s in &mut self.sessions {
            s.age = s.age.saturating_add(downtime);
            if s.ever_connected {
                s.disconnected_for = Some(s.disconnected_for.unwrap_or_default().saturating_add(downtime));
            }
        }
        self
    }
}

impl std::fmt::Debug for Snapshot {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Snapshot")
            .field("sessions", &self.sessions.len())
            .finish_non_exhaustive()
    }
}

struct Pending {
    peer: IpAddr,
    group: String,
    failures: u32,
    expires: Instant,
}

/// A password verification handed out with [`HttpStep::VerifyPassword`] and not yet answered.
/// Everything needed to finish the login is kept here, so the verdict carries only the ticket.
struct InFlightCheck {
    /// The connection the request came on; a verdict from another connection is refused.
    peer: SocketAddr,
    handle: String,
    group: String,
    user: String,
    /// False for an unknown user: the verification ran only to cost the same time, and its
    /// verdict is ignored.
    known: bool,
    consumed: usize,
    close: bool,
    expires: Instant,
}

/// The remote-access engine. See the crate docs and README.md for how to drive it.
pub struct Server {
    config: Config,
    rng: Box<dyn crypto::Random>,
    cookie_key_bytes: [u8; 32],
    cookie_key: hmac::Key,
    next_index: u32,
    sessions: HashMap<SessionId, Session>,
    by_cookie: HashMap<[u8; 8], SessionId>,
    by_addr: HashMap<Ipv4Addr, SessionId>,
    by_demux: HashMap<[u8; 32], SessionId>,
    pending: HashMap<String, Pending>,
    pending_by_peer: HashMap<IpAddr, usize>,
    /// Password verifications running outside the engine, by ticket.
    checks: HashMap<u64, InFlightCheck>,
    next_ticket: u64,
    /// Failed logins per client address: (window start, count).
    failures_by_peer: HashMap<IpAddr, (Instant, u32)>,
    last_sweep: Option<Instant>,
    timers: BTreeSet<(Instant, SessionId)>,
    tx_buf: Vec<u8>,
    tx_q: VecDeque<(SessionId, Channel, usize, usize)>,
    pkt_buf: Vec<u8>,
    pkt_q: VecDeque<(SessionId, usize, usize)>,
    events: VecDeque<Event>,
    stats: Stats,
}

/// Control frames seen while decoding a TLS input (rare; data frames are handled inline).
enum Control {
    DpdReq(usize, usize),
    DpdReqOwned(Vec<u8>),
    DpdResp,
    Disconnect(Option<u8>),
    Terminate,
    Dropped,
}

impl Server {
    /// Creates the engine. `rng` keys cookies, auth handles, App-IDs and DTLS session IDs.
    pub fn new(now: Instant, config: Config, mut rng: Box<dyn crypto::Random>) -> Self {
        let _ = now;
        let mut key = [0u8; 32];
        rng.fill(&mut key);
        Self::with_key(config, rng, key, 1)
    }

    fn with_key(
        config: Config,
        rng: Box<dyn crypto::Random>,
        key: [u8; 32],
        next_index: u32,
    ) -> Self {
        Self {
            config,
            rng,
            cookie_key_bytes: key,
            cookie_key: hmac::Key::new(hmac::HMAC_SHA256, &key),
            next_index,
            sessions: HashMap::new(),
            by_cookie: HashMap::new(),
            by_addr: HashMap::new(),
            by_demux: HashMap::new(),
            pending: HashMap::new(),
            pending_by_peer: HashMap::new(),
            checks: HashMap::new(),
            next_ticket: 1,
            failures_by_peer: HashMap::new(),
            last_sweep: None,
            timers: BTreeSet::new(),
            tx_buf: Vec::with_capacity(64 * 1024),
            tx_q: VecDeque::new(),
            pkt_buf: Vec::with_capacity(64 * 1024),
            pkt_q: VecDeque::new(),
            events: VecDeque::new(),
            stats: Stats::default(),
        }
    }

    /// Replaces the configuration (reload). Existing sessions keep the group policy they
    /// logged in with until they reconnect.
    pub fn set_config(&mut self, now: Instant, config: Config) {
        let _ = now;
        self.config = config;
    }

    pub fn config(&self) -> &Config {
        &self.config
    }

    pub fn stats(&self) -> &Stats {
        &self.stats
    }

    // -----------------------------------------------------------------------------------
    // HTTP phase

    /// Feeds the buffered plaintext of a TLS connection that is not (yet) a tunnel. Call again
    /// after every read with the whole unconsumed buffer.
    ///
    /// A password is verified inline (PBKDF2, tens of milliseconds); a caller that serves other
    /// work meanwhile uses [`Server::handle_http_deferred`] instead.
    pub fn handle_http(
        &mut self,
        now: Instant,
        conn: &ConnInfo,
        buf: &[u8],
    ) -> Result<HttpOutcome, HttpReject> {
        match self.handle_http_deferred(now, conn, buf)? {
            HttpStep::Done(o) => Ok(o),
            HttpStep::VerifyPassword(check) => {
                let ok = check.verify();
                Ok(self.handle_password_verdict(now, conn, check.ticket(), ok))
            }
        }
    }

    /// Like [`Server::handle_http`], but a login that needs a password verified returns
    /// [`HttpStep::VerifyPassword`] instead of doing it: run [`PasswordCheck::verify`]
    /// wherever it does not hold up other work, then give the result to
    /// [`Server::handle_password_verdict`], which returns what `handle_http` would have. Do not
    /// feed the same connection's buffer again in between: the request is already taken.
    pub fn handle_http_deferred(
        &mut self,
        now: Instant,
        conn: &ConnInfo,
        buf: &[u8],
    ) -> Result<HttpStep, HttpReject> {
        self.reset_output();
        self.expire_pending(now);
        let req = match http::parse(buf) {
            Ok(None) => return Ok(HttpOutcome::NeedMore.into()),
            Ok(Some(r)) => r,
            Err(error) => {
                self.stats.http_malformed += 1;
                self.refused(conn.peer, format!("malformed HTTP request: {error}"));
                let response = http::error_response(&error);
                return Err(HttpReject { error, response });
            }
        };
        self.stats.http_requests += 1;
        let consumed = req.len;
        let keep_close = req.wants_close();
        let respond = |r: Response, close: bool| HttpOutcome::Respond {
            consumed,
            bytes: r.to_bytes(),
            close: close || keep_close,
        };
        if req.method == "CONNECT" {
            return Ok(self.handle_connect(now, conn, &req).into());
        }
        if req.method == "POST" && !req.body.is_empty() {
            return Ok(self.handle_auth_post(now, conn, &req));
        }
        if req.method == "GET" || req.method == "HEAD" {
            if let Some(c) = housekeeping::lookup(req.target) {
                // Cisco's housekeeping URLs (see `housekeeping`): constant answers, no state.
                let r = Response::new(200, "OK")
                    .header("Connection", "Keep-Alive")
                    .header("X-Transcend-Version", "1")
                    .header("Cache-Control", "no-store");
                let r = if req.method == "HEAD" {
                    // RFC 9110 §9.3.2/§8.6: GET's headers, its Content-Length, no content.
                    r.header("Content-Type", c.content_type)
                        .header("Content-Length", c.body.len().to_string())
                        .without_content_length()
                } else {
                    r.body(c.content_type, c.body)
                };
                return Ok(respond(r, false).into());
            }
        }
        let head = req.method == "HEAD";
        if (req.method == "GET" || head) && req.target.split('?').next() == Some("/") {
            // The non-aggregate login starts with `GET /` (ocserv answers it with the form):
            // the same answer and the same bounded pending login as an aggregate init.
            if head {
                // HEAD is what load balancers probe with, every few seconds: it gets GET's
                // status and headers but opens no pending login (each would hold one of the
                // address's few slots for the pending lifetime, and the probes alone would
                // soon get 503 and lock real clients behind that address out).
                return Ok(self.head_login(conn, &req).into());
            }
            let init = ClientAuth::empty(AuthKind::Init);
            return Ok(self.handle_auth_msg(now, conn, &req, init));
        }
        if req.method == "GET" || req.method == "POST" || head {
            // No clientless portal: anything but the XML exchange gets a plain 404 (for
            // HEAD, its status and headers with GET's Content-Length and no content).
            let r = Response::new(404, "Not Found").body("text/plain", "Not Found\n");
            let step: HttpStep = respond(r, false).into();
            return Ok(if head { head_of(step) } else { step });
        }
        Ok(respond(
            Response::new(405, "Method Not Allowed").body("text/plain", "Method Not Allowed\n"),
            true,
        )
        .into())
    }

    fn handle_auth_post(
        &mut self,
        now: Instant,
        conn: &ConnInfo,
        req: &Request<'_>,
    ) -> HttpStep {
        let msg = match auth::parse_client_auth(req.body) {
            Ok(m) => m,
            Err(e) => {
                self.stats.http_malformed += 1;
                return self.refuse(
                    conn.peer,
                    format!("malformed login post: {e}"),
                    req.len,
                    (400, "Bad Request"),
                    &e.to_string(),
                ).into();
            }
        };
        self.handle_auth_msg(now, conn, req, msg)
    }

    /// A login step, from a post or (as an init) from `GET /`.
    fn handle_auth_msg(
        &mut self,
        now: Instant,
        conn: &ConnInfo,
        req: &Request<'_>,
        msg: ClientAuth,
    ) -> HttpStep {
        let consumed = req.len;
        let close = req.wants_close();
        if msg.kind == AuthKind::Other("logout".into()) {
            return self.handle_logout(now, req, &msg).into();
        }
        let LoginTarget { handle, group, unknown, url_unknown } = self.login_target(req, &msg);
        let Some(group) = group else {
            return self.refuse(
                conn.peer,
                "login refused: no tunnel group configured".into(),
                consumed,
                (503, "Service Unavailable"),
                "no tunnel group",
            ).into();
        };
        let shown = self.shown_name(&group);
        if let Some(asked) = url_unknown {
            self.events.push_back(Event::Syslog(syslog::url_group_unknown_716900(
                &asked,
                conn.peer.ip(),
                &group.name,
            )));
        }

        if let Some(bad) = unknown {
            self.stats.auth_unknown_group += 1;
            self.refused(conn.peer, format!("login: unknown group '{bad}'"));
            let h = match self.pending_for(now, conn.peer.ip(), handle.clone(), &group.name) {
                Ok(h) => h,
                Err(o) => return o(consumed).into(),
            };
            let err = format!("Group '{bad}' is not a valid group.");
            return self.form_response(consumed, close, &h, &shown, Some(&err), true).into();
        }

        if !self.config.policy_of(&group).ssl_client {
            if let Some(h) = &handle {
                self.drop_pending(h);
            }
            return self.refuse(
                conn.peer,
                format!(
                    "login refused: group policy of '{}' lacks vpn-tunnel-protocol ssl-client",
                    group.name
                ),
                consumed,
                (403, "Forbidden"),
                "AnyConnect is not permitted for this group",
            ).into();
        }
        if group.authentication == AuthMethod::AaaCertificate && conn.client_cert.is_none() {
            return self.refuse_no_certificate(conn.peer, &group.name, consumed).into();
        }
        if group.authentication == AuthMethod::Certificate {
            if let Some(h) = &handle {
                self.drop_pending(h);
            }
            return match &conn.client_cert {
                Some(cert) => {
                    let user = cert.common_name.clone();
                    self.complete_login(now, conn, &group, &user, consumed, close)
                }
                None => self.refuse_no_certificate(conn.peer, &group.name, consumed),
            }.into();
        }

        let credentials = matches!(msg.kind, AuthKind::AuthReply) && msg.username.is_some();
        if !credentials {
            // init (or a reply without credentials, e.g. after a group change): show the form.
            let h = match self.pending_for(now, conn.peer.ip(), handle.clone(), &group.name) {
                Ok(h) => h,
                Err(o) => return o(consumed).into(),
            };
            return self.form_response(consumed, close, &h, &shown, None, true).into();
        }
        self.check_password(now, conn, &msg, handle, &group, consumed, close)
    }

    /// Where a login step goes, decided without changing anything: the pending login it
    /// continues (cookie first, then the echoed opaque handle) and its group: explicit
    /// selection, else the pending login's, else the URL path, else the default. A URL group
    /// that matches nothing falls back to the default group, as the ASA puts such a client in
    /// DefaultWEBVPNGroup; unlike the ASA we say so (716900, `url_unknown`).
    fn login_target(&self, req: &Request<'_>, msg: &ClientAuth) -> LoginTarget {
        let handle = req
            .cookie("webvpncontext")
            .map(str::to_string)
            .filter(|h| self.pending.contains_key(h))
            .or_else(|| msg.handle.clone().filter(|h| self.pending.contains_key(h)));
        let mut url_unknown = None;
        let requested = msg
            .group_select
            .clone()
            .or_else(|| {
                handle
                    .as_ref()
                    .and_then(|h| self.pending.get(h))
                    .map(|p| p.group.clone())
            })
            .or_else(|| {
                let asked = [url_group(msg.group_access.as_deref()), url_group(Some(req.target))];
                let known = asked.iter().flatten().find(|g| self.config.group(g).is_some()).cloned();
                if known.is_none() {
                    // `/auth` is where a login form posts its reply (ocserv's form action,
                    // which openconnect follows), not a group the user typed: a reply sent
                    // there after its pending login expired is no reason for a 716900.
                    url_unknown = asked.into_iter().flatten().find(|g| g != FORM_ACTION_SEGMENT);
                }
                known
            });
        let (group, unknown) = match requested {
            Some(g) => match self.config.group(&g) {
                Some(tg) => (Some(tg.clone()), None),
                None => (self.default_group().cloned(), Some(g)),
            },
            None => (self.default_group().cloned(), None),
        };
        LoginTarget { handle, group, unknown, url_unknown }
    }

    /// `HEAD /` (and `HEAD /?...`): what `GET /` would answer at this moment (status,
    /// headers, Content-Length), without the content (RFC 9110 §9.3.2), decided by the same
    /// steps as [`Server::handle_auth_msg`] but read-only: no pending login is opened or
    /// refreshed, no session made, nothing logged or counted (a probe is not a login
    /// attempt). The header fields whose values exist only once GET creates its state are
    /// left out, as §9.3.2 allows: the context (or session) `Set-Cookie`, and for a
    /// certificate group's login, whose answer carries a new session's cookie, the
    /// Content-Length.
    fn head_login(&self, conn: &ConnInfo, req: &Request<'_>) -> HttpOutcome {
        let consumed = req.len;
        let close = req.wants_close();
        let init = ClientAuth::empty(AuthKind::Init);
        let LoginTarget { handle, group, unknown, .. } = self.login_target(req, &init);
        let Some(group) = group else {
            return head_only(closing_response(consumed, (503, "Service Unavailable"), "no tunnel group"));
        };
        // The form as GET would send it, once GET has its pending login: an unknown group is
        // answered with the form before the group's other checks, as in handle_auth_msg.
        let form = |err: Option<String>| {
            // GET opens a pending login here, unless its cookie names a live one.
            if handle.is_none() && !self.pending_admits(conn.peer.ip()) {
                return head_only(unfinished_logins_refusal(consumed));
            }
            // The form's length does not depend on which handle it carries: all are
            // CONTEXT_BYTES hex-encoded.
            let placeholder = "0".repeat(2 * CONTEXT_BYTES);
            let h = handle.as_deref().unwrap_or(&placeholder);
            let shown = self.shown_name(&group);
            head_only(self.form_response(consumed, close, h, &shown, err.as_deref(), false))
        };
        if let Some(bad) = &unknown {
            return form(Some(format!("Group '{bad}' is not a valid group.")));
        }
        if !self.config.policy_of(&group).ssl_client {
            return head_only(closing_response(
                consumed,
                (403, "Forbidden"),
                "AnyConnect is not permitted for this group",
            ));
        }
        match (&group.authentication, &conn.client_cert) {
            (AuthMethod::AaaCertificate | AuthMethod::Certificate, None) => head_only(closing_response(
                consumed,
                (401, "Unauthorized"),
                "client certificate required",
            )),
            (AuthMethod::Certificate, Some(_)) => {
                let limit = self.config.limits.max_sessions;
                if limit != 0 && self.sessions.len() >= limit {
                    return head_only(closing_response(
                        consumed,
                        (503, "Service Unavailable"),
                        "session limit reached",
                    ));
                }
                // GET logs in here and answers with the new session's cookie and XML.
                let r = Response::new(200, "OK")
                    .header("Connection", "Keep-Alive")
                    .header("X-Transcend-Version", "1")
                    .header("Cache-Control", "no-store")
                    .header("Content-Type", "text/xml")
                    .without_content_length();
                HttpOutcome::Respond { consumed, bytes: r.to_bytes(), close }
            }
            _ => form(None),
        }
    }

    /// Cisco's logout post (`<config-auth type="logout"><session-token>`), sent when the user
    /// disconnects: ends the session the token names, as a CSTP DISCONNECT 0xb0 would, so its
    /// lease and 113019 ("User Requested") do not wait for the reconnect grace or idle timer
    /// (Cisco FAQ 116312: otherwise the parent session lives on). Answered 200 whether or not
    /// the token is current (the session may already be gone), and never with a login form:
    /// a logout creates no pending login.
    fn handle_logout(&mut self, now: Instant, req: &Request<'_>, msg: &ClientAuth) -> HttpOutcome {
        let token = msg.session_token.as_deref().or_else(|| req.cookie("webvpn"));
        // An unknown or stale token is not an error worth a log line: the client is leaving.
        if let Some(id) = token.and_then(|t| self.session_by_cookie(t)) {
            self.end_session(now, id, DisconnectReason::UserRequested, Some(FrameType::Disconnect));
        }
        let r = Response::new(200, "OK")
            .header("Connection", "Keep-Alive")
            .header("X-Transcend-Version", "1")
            .header("Cache-Control", "no-store")
            .body("text/xml", "");
        HttpOutcome::Respond { consumed: req.len, bytes: r.to_bytes(), close: req.wants_close() }
    }

    /// First half of a password login: admission (pending context, per-address failure
    /// budget) and the request to verify; [`Server::handle_password_verdict`] is the second.
    #[allow(clippy::too_many_arguments)]
    fn check_password(
        &mut self,
        now: Instant,
        conn: &ConnInfo,
        msg: &ClientAuth,
        handle: Option<String>,
        group: &TunnelGroup,
        consumed: usize,
        close: bool,
    ) -> HttpStep {
        // A reply must continue a login we started (bounded pre-auth state and failure count).
        let h = match self.pending_for(now, conn.peer.ip(), handle, &group.name) {
            Ok(h) => h,
            Err(o) => return o(consumed).into(),
        };
        let user = msg.username.clone().unwrap_or_default();
        let pw = msg.password.clone().unwrap_or_default();
        // Per-address failure budget, checked before any hashing: password guessing and
        // PBKDF2 CPU burn are bounded per client address whatever the number of contexts.
        // Once an address has failed, its verifications still running count as
        // failures-to-be, or parallel connections could all pass this check before the next
        // verdict is in; an address without failures (many users behind one NAT) is bounded
        // only by the in-flight cap below.
        let limits = self.config.limits.clone();
        let peer = conn.peer.ip();
        let in_flight = self.checks.values().filter(|c| c.peer.ip() == peer).count();
        let recent = match self.failures_by_peer.get(&peer) {
            Some((start, n)) if now < *start + limits.auth_failure_window => Some(*n),
            _ => None,
        };
        if recent.is_some_and(|n| {
            n.saturating_add(u32::try_from(in_flight).unwrap_or(u32::MAX))
                >= limits.auth_failures_per_peer
        }) {
            self.stats.auth_rate_limited += 1;
            self.drop_pending(&h);
            self.refused(
                conn.peer,
                format!("login for '{user}' refused: too many failed logins from this address"),
            );
            let r = Response::new(429, "Too Many Requests")
                .header("Connection", "close")
                .header(
                    "Retry-After",
                    limits.auth_failure_window.as_secs().to_string(),
                )
                .body("text/plain", "too many failed logins\n");
            return HttpOutcome::Respond {
                consumed,
                bytes: r.to_bytes(),
                close: true,
            }
            .into();
        }
        // Verifications in flight are bounded like pending logins (per address and in all):
        // each holds a password and will cost a PBKDF2 run.
        if in_flight >= limits.pending_auth_per_peer || self.checks.len() >= limits.pending_auth_total {
            self.stats.auth_pending_refused += 1;
            self.refused(
                conn.peer,
                "login refused: too many password checks in progress".into(),
            );
            let r = Response::new(503, "Service Unavailable")
                .header("Connection", "close")
                .header("Retry-After", "5")
                .body("text/plain", "too many logins in progress\n");
            return HttpOutcome::Respond {
                consumed,
                bytes: r.to_bytes(),
                close: true,
            }
            .into();
        }
        // Unknown users cost the same work (one real verification against some configured
        // user's hash, verdict ignored), so timing does not reveal which names exist.
        let (hash, known) = match self.config.user(&user) {
            Some(u) => (Some(u.password_hash.clone()), true),
            None => (self.config.users.first().map(|u| u.password_hash.clone()), false),
        };
        let ticket = PasswordTicket(self.next_ticket);
        self.next_ticket = self.next_ticket.wrapping_add(1);
        self.checks.insert(
            ticket.0,
            InFlightCheck {
                peer: conn.peer,
                handle: h,
                group: group.name.clone(),
                user,
                known,
                consumed,
                close,
                expires: now + limits.pending_auth_lifetime,
            },
        );
        match hash {
            Some(hash) => HttpStep::VerifyPassword(PasswordCheck {
                ticket,
                hash,
                password: pw,
                verifier: self.config.verifier.clone(),
            }),
            // No user configured at all: nothing to verify against.
            None => self.handle_password_verdict(now, conn, ticket, false).into(),
        }
    }

    /// Second half of a password login: `verified` is what [`PasswordCheck::verify`] returned
    /// for the check with `ticket`, which [`Server::handle_http_deferred`] handed out on the
    /// same connection `conn`. Returns what to answer, exactly as `handle_http` would have
    /// (the `consumed` count is that of the original request). A ticket that is no longer
    /// waiting (its login expired, it was answered already, or it belongs to another
    /// connection) is refused with a closing 401 and `consumed` 0.
    pub fn handle_password_verdict(
        &mut self,
        now: Instant,
        conn: &ConnInfo,
        ticket: PasswordTicket,
        verified: bool,
    ) -> HttpOutcome {
        self.reset_output();
        self.expire_pending(now);
        let check = match self.checks.remove(&ticket.0) {
            Some(c) if c.peer == conn.peer => c,
            other => {
                if let Some(c) = other {
                    // Someone else's ticket: leave it for its own connection.
                    self.checks.insert(ticket.0, c);
                }
                self.stats.auth_stale_verdicts += 1;
                self.refused(
                    conn.peer,
                    "login refused: the password check is no longer pending".into(),
                );
                return closing_response(0, (401, "Unauthorized"), "login expired");
            }
        };
        let InFlightCheck { handle: h, group, user, known, consumed, close, .. } = check;
        // The login context or its group may have gone while the password was checked
        // (expired, reload): no login without both.
        let group = match self.config.group(&group) {
            Some(g) if self.pending.contains_key(&h) => g.clone(),
            _ => {
                self.drop_pending(&h);
                self.stats.auth_stale_verdicts += 1;
                self.refused(
                    conn.peer,
                    format!("login for '{user}' refused: the login expired during the password check"),
                );
                return closing_response(consumed, (401, "Unauthorized"), "login expired");
            }
        };
        let shown = self.shown_name(&group);
        let ok = verified && known;
        let peer = conn.peer.ip();
        if ok {
            self.drop_pending(&h);
            self.events
                .push_back(Event::Syslog(syslog::auth_ok_113012(&user)));
            return self.complete_login(now, conn, &group, &user, consumed, close);
        }
        self.stats.auth_failures += 1;
        if self.failures_by_peer.len() < self.config.limits.pending_auth_total
            || self.failures_by_peer.contains_key(&peer)
        {
            let window = self.config.limits.auth_failure_window;
            let e = self.failures_by_peer.entry(peer).or_insert((now, 0));
            if now >= e.0 + window {
                *e = (now, 0);
            }
            e.1 += 1;
        }
        let reason = if self.config.user(&user).is_some() {
            "Invalid password"
        } else {
            "Invalid username"
        };
        self.events
            .push_back(Event::Syslog(syslog::auth_rejected_113015(
                &user,
                reason,
                conn.peer.ip(),
            )));
        self.refused(
            conn.peer,
            format!("login failed for user '{user}' ({reason})"),
        );
        let max = self.config.limits.max_auth_failures;
        let failures = match self.pending.get_mut(&h) {
            Some(p) => {
                p.failures += 1;
                p.expires = now + self.config.limits.pending_auth_lifetime;
                p.failures
            }
            None => max,
        };
        if failures >= max {
            self.drop_pending(&h);
            return closing_response(consumed, (401, "Unauthorized"), "too many failed logins");
        }
        self.form_response(consumed, close, &h, &shown, Some("Login failed."), true)
    }

    fn complete_login(
        &mut self,
        now: Instant,
        conn: &ConnInfo,
        group: &TunnelGroup,
        user: &str,
        consumed: usize,
        close: bool,
    ) -> HttpOutcome {
        let limit = self.config.limits.max_sessions;
        if limit != 0 && self.sessions.len() >= limit {
            return self.refuse(
                conn.peer,
                format!("login for '{user}' refused: session limit {limit} reached"),
                consumed,
                (503, "Service Unavailable"),
                "session limit reached",
            );
        }
        self.stats.auth_success += 1;
        let mut cookie = [0u8; 32];
        self.rng.fill(&mut cookie);
        let tag = self.cookie_tag(&cookie);
        // Sessions are found by the first bytes of the cookie's HMAC, not of the cookie: what
        // the engine keeps (and a saved snapshot holds) contains no byte of any cookie.
        let prefix = tag_prefix(&tag);
        if self.by_cookie.contains_key(&prefix) {
            // 2^-64 chance; refuse rather than alias two sessions.
            let r = Response::new(503, "Service Unavailable").body("text/plain", "retry\n");
            return HttpOutcome::Respond {
                consumed,
                bytes: r.to_bytes(),
                close: true,
            };
        }
        let id = self.alloc_index();
        let policy = self.config.policy_of(group);
        let s = Session {
            id,
            cookie_prefix: prefix,
            cookie_tag: tag,
            user: user.to_string(),
            tunnel_group: group.name.clone(),
            group_policy: group.default_group_policy.clone(),
            policy,
            peer: conn.peer,
            address: None,
            netmask: Ipv4Addr::UNSPECIFIED,
            created: now,
            last_data: now,
            phase: Phase::AwaitingConnect {
                expires: now + self.config.cookie_unused_lifetime,
            },
            tls: None,
            dtls: DtlsChannel::default(),
            tx: Channel::Tls,
            fallback: Fallback::new(&self.config.fallback),
            mtu: None,
            bytes_tx: 0,
            bytes_rx: 0,
            reconnects: 0,
            fallbacks: 0,
            ever_connected: false,
            wake: None,
            too_big_icmp: None,
            too_big_log: None,
            advertised: None,
        };
        self.events
            .push_back(Event::Syslog(syslog::session_started_716001(who(&s))));
        self.events
            .push_back(Event::Syslog(syslog::parent_started_113039(who(&s))));
        self.by_cookie.insert(prefix, id);
        self.sessions.insert(id, s);
        self.reschedule(id);
        let cookie_hex = hex::encode_upper(cookie);
        let hash = &self.config.server_cert_sha1;
        let mut r = Response::new(200, "OK")
            .header(
                "Set-Cookie",
                format!("webvpn={cookie_hex}; path=/; Secure; HttpOnly"),
            )
            .header(
                "Set-Cookie",
                "webvpncontext=; expires=Thu, 01 Jan 1970 22:00:00 GMT; path=/; Secure",
            );
        if !hash.is_empty() {
            // The ASA's client-parameters cookie: bu = base URL, p:t = portal on, iu = where
            // the housekeeping (update/profile) URLs live (served by `housekeeping`), sh = the
            // server certificate's SHA-1 (ocserv sends the same shape to Cisco clients).
            r = r.header("Set-Cookie", format!("webvpnc=bu:/&p:t&iu:1/&sh:{hash}; path=/; Secure"));
        }
        // Keep-Alive as ocserv sends it: Cisco clients keep init, auth and CONNECT on one
        // connection (HTTP/1.1 implies it; the header says it to clients that look).
        let r = r
            .header("Connection", "Keep-Alive")
            .header("X-Transcend-Version", "1")
            .header("Cache-Control", "no-store")
            .body("text/xml", auth::complete_xml(&cookie_hex, id.0, hash));
        HttpOutcome::Respond {
            consumed,
            bytes: r.to_bytes(),
            close,
        }
    }

    /// The login form naming the pending login `handle`; `set_cookie`: also as the
    /// `webvpncontext` cookie (not for HEAD, which opens no pending login).
    fn form_response(
        &self,
        consumed: usize,
        close: bool,
        handle: &str,
        group: &str,
        error: Option<&str>,
        set_cookie: bool,
    ) -> HttpOutcome {
        let list: Vec<&str> = if self.config.group_list {
            self.config
                .group_list()
                .into_iter()
                .map(|(a, _)| a)
                .collect()
        } else {
            Vec::new()
        };
        let xml = auth::auth_request_xml(&AuthForm {
            handle,
            group,
            group_list: &list,
            error,
        });
        let mut r = Response::new(200, "OK");
        if set_cookie {
            r = r.header(
                "Set-Cookie",
                format!("webvpncontext={handle}; path=/; Secure; HttpOnly"),
            );
        }
        let r = r
            .header("Connection", "Keep-Alive")
            .header("X-Transcend-Version", "1")
            .header("Cache-Control", "no-store")
            .body("text/xml", xml);
        HttpOutcome::Respond {
            consumed,
            bytes: r.to_bytes(),
            close,
        }
    }

    /// Finds or creates the pending login (bounded per peer and in total).
    #[allow(clippy::type_complexity)]
    fn pending_for(
        &mut self,
        now: Instant,
        peer: IpAddr,
        handle: Option<String>,
        group: &str,
    ) -> Result<String, Box<dyn FnOnce(usize) -> HttpOutcome>> {
        let life = self.config.limits.pending_auth_lifetime;
        if let Some(h) = handle {
            if let Some(p) = self.pending.get_mut(&h) {
                p.group = group.to_string();
                p.expires = now + life;
                return Ok(h);
            }
        }
        if !self.pending_admits(peer) {
            self.stats.auth_pending_refused += 1;
            self.refused(
                SocketAddr::new(peer, 0),
                "login refused: too many unfinished logins".into(),
            );
            return Err(Box::new(unfinished_logins_refusal));
        }
        let mut raw = [0u8; CONTEXT_BYTES];
        self.rng.fill(&mut raw);
        let h = hex::encode_upper(raw);
        self.pending.insert(
            h.clone(),
            Pending {
                peer,
                group: group.to_string(),
                failures: 0,
                expires: now + life,
            },
        );
        *self.pending_by_peer.entry(peer).or_insert(0) += 1;
        Ok(h)
    }

    /// Whether a new pending login from `peer` fits the bounds (per address and in all).
    fn pending_admits(&self, peer: IpAddr) -> bool {
        let per_peer = self.pending_by_peer.get(&peer).copied().unwrap_or(0);
        per_peer < self.config.limits.pending_auth_per_peer
            && self.pending.len() < self.config.limits.pending_auth_total
    }

    fn drop_pending(&mut self, h: &str) {
        if let Some(p) = self.pending.remove(h) {
            if let Some(n) = self.pending_by_peer.get_mut(&p.peer) {
                *n = n.saturating_sub(1);
                if *n == 0 {
                    self.pending_by_peer.remove(&p.peer);
                }
            }
        }
    }

    fn expire_pending(&mut self, now: Instant) {
        // Sweep at most once a second: the scan is over up to `pending_auth_total` entries.
        if self
            .last_sweep
            .is_some_and(|t| now < t + Duration::from_secs(1))
        {
            return;
        }
        self.last_sweep = Some(now);
        let window = self.config.limits.auth_failure_window;
        self.failures_by_peer
            .retain(|_, (start, _)| now < *start + window);
        // A verdict that never came (the caller lost the connection) must not hold a slot.
        self.checks.retain(|_, c| now < c.expires);
        if self.pending.is_empty() {
            return;
        }
        let dead: Vec<String> = self
            .pending
            .iter()
            .filter(|(_, p)| p.expires <= now)
            .map(|(h, _)| h.clone())
            .collect();
        for h in dead {
            self.drop_pending(&h);
        }
    }

    fn default_group(&self) -> Option<&TunnelGroup> {
        // The first group with an alias (what the list shows first), else the first group.
        self.config
            .group_list()
            .first()
            .map(|(_, g)| *g)
            .or_else(|| self.config.tunnel_groups.first())
    }

    fn shown_name(&self, g: &TunnelGroup) -> String {
        g.aliases.first().cloned().unwrap_or_else(|| g.name.clone())
    }

    /// The session a `webvpn` cookie belongs to, if the cookie is genuine and current.
    fn session_by_cookie(&self, cookie: &str) -> Option<SessionId> {
        let mut raw = [0u8; 32];
        hex::decode_to_slice(cookie, &mut raw).ok()?;
        let id = *self.by_cookie.get(&tag_prefix(&self.cookie_tag(&raw)))?;
        let s = self.sessions.get(&id)?;
        // ring's constant-time tag check: the comparison leaks nothing about the cookie.
        hmac::verify(&self.cookie_key, &raw, &s.cookie_tag).ok()?;
        Some(id)
    }

    fn handle_connect(&mut self, now: Instant, conn: &ConnInfo, req: &Request<'_>) -> HttpOutcome {
        let consumed = req.len;
        let fail = |code: u16, reason: &'static str, body: &str| {
            closing_response(consumed, (code, reason), body)
        };
        if req.target != connect::TUNNEL_PATH {
            self.refused(conn.peer, format!("CONNECT to unknown path {}", req.target));
            return fail(404, "Not Found", "Not Found");
        }
        let creq = match ConnectRequest::parse(req) {
            Ok(c) => c,
            Err(e) => {
                self.stats.http_malformed += 1;
                self.events.push_back(Event::Syslog(text::SyslogLine {
                    severity: 4,
                    id: 722001,
                    text: format!("IP <{}> Error parsing SVC connect request.", conn.peer.ip()),
                }));
                self.refused(conn.peer, format!("tunnel request: {e}"));
                return fail(400, "Bad Request", &e.to_string());
            }
        };
        let Some(id) = creq
            .cookie
            .as_deref()
            .and_then(|c| self.session_by_cookie(c))
        else {
            self.stats.cookie_rejected += 1;
            let why = if creq.cookie.is_some() {
                "invalid or expired session cookie"
            } else {
                "no session cookie"
            };
            self.refused(conn.peer, format!("tunnel refused: {why}"));
            return fail(401, "Unauthorized", "Cookie is not acceptable");
        };
        let grace = self.config.reconnect_grace;
        let (replacing, after_drop, first) = {
            let s = &self.sessions[&id];
            (
                matches!(s.phase, Phase::Connected),
                matches!(s.phase, Phase::Disconnected { .. }),
                !s.ever_connected,
            )
        };
        // Address: keep the session's lease; a client asking for another one is refused (it
        // would abort on a different address anyway, anyconnect.md §5).
        let existing = self.sessions[&id].address;
        let address = match (existing, creq.address) {
            (Some(a), Some(want)) if a != want => {
                self.refused(
                    conn.peer,
                    format!(
                        "tunnel refused: client asks for {want}, session {} holds {a}",
                        id.0
                    ),
                );
                return fail(
                    409,
                    "Conflict",
                    "requested address is not this session's address",
                );
            }
            (Some(a), _) => a,
            (None, want) => {
                match self.lease(id, want) {
                    Some(a) => a,
                    None => {
                        let s = &self.sessions[&id];
                        self.events.push_back(Event::Syslog(text::SyslogLine {
                        severity: 4,
                        id: 722004,
                        text: format!("Group <{}> User <{}> IP <{}> Error responding to SVC connect request.", s.group_policy, s.user, conn.peer.ip()),
                    }));
                        self.refused(
                            conn.peer,
                            format!(
                                "tunnel refused: no free address in the pools of '{}'",
                                s.tunnel_group
                            ),
                        );
                        return fail(503, "Service Unavailable", "no address available");
                    }
                }
            }
        };
        let netmask = self.netmask_for(id, address);

        // Close what the old connection had (DTLS is never resumed across a reconnect).
        self.drop_dtls(id, true);
        let policy = self.sessions[&id].policy.clone();
        let dtls = if policy.dtls {
            if creq.offers_psk() {
                let mut app_id = [0u8; 32];
                self.rng.fill(&mut app_id);
                Some(DtlsKeying::Psk { app_id })
            } else if let (Some(ms), Some(cipher)) = (
                creq.master_secret,
                connect::choose_legacy(&creq, &self.config.legacy_dtls_ciphers),
            ) {
                let mut session_id = [0u8; 32];
                self.rng.fill(&mut session_id);
                Some(DtlsKeying::Legacy {
                    session_id,
                    master_secret: ms,
                    cipher,
                })
            } else {
                None
            }
        } else {
            None
        };
        let dtls_overhead = dtls.as_ref().map(|k| match k {
            // PSK suite is negotiated later: the largest expansion of those the I/O layer offers.
            DtlsKeying::Psk { .. } => mtu::psk_dtls_overhead(),
            DtlsKeying::Legacy { cipher, .. } => mtu::dtls_overhead(cipher.openssl_name()),
        });
        let mtu_policy = policy.mtu_policy.unwrap_or(self.config.mtu_policy);
        let mut plan = mtu::plan(&MtuInputs {
            policy: mtu_policy,
            tcpmss: if self.config.tcpmss == 0 {
                1380
            } else {
                self.config.tcpmss
            },
            tls: mtu::tls_overhead(conn.tls_version, &conn.tls_cipher),
            dtls: dtls_overhead,
            client_base_mtu: creq.base_mtu,
            link_mtu: self.config.link_mtu,
            configured: policy.mtu,
        });
        // A reconnect never changes the advertised MTU: openconnect keeps its tun MTU from the
        // first CONNECT (anyconnect.md §2) and Cisco's client would reconnect again to apply a
        // new one (asa.md §6). The TLS channel can physically carry frames that large, so its
        // threshold is raised to match; a DTLS path that shrank sends the excess over TLS.
        if let Some(prev) = self.sessions[&id].advertised {
            plan = mtu::sticky(plan, prev, mtu_policy);
        }
        let session_left = policy
            .session_timeout
            .map(|t| t.saturating_sub(now - self.sessions[&id].created));
        let bytes = connect::connected_response(&Connected {
            address,
            netmask,
            policy: &policy,
            mtu: plan,
            dtls: dtls.as_ref(),
            dtls_port: self.config.dtls_port,
            disconnected_timeout: grace,
            dtls_dpd_max: self.config.dtls_dpd_max,
            dtls_dpd_floor: (!creq.is_openconnect()).then_some(connect::CISCO_DPD_FLOOR),
            session_timeout_left: session_left,
        });
        if let Some(k) = &dtls {
            self.by_demux.insert(*k.demux_id(), id);
        }
        self.stats.tunnels += 1;
        let s = self.sessions.get_mut(&id).expect("session checked above");
        let w_peer = conn.peer;
        s.peer = w_peer;
        s.tls = Some(TlsChannel {
            decoder: cstp::CstpDecoder::new(),
            version: conn.tls_version,
            cipher: conn.tls_cipher.clone(),
            last_rx: now,
            dpd_sent: None,
        });
        s.dtls = DtlsChannel {
            keying: dtls.clone(),
            up: false,
            last_rx: None,
        };
        s.tx = Channel::Tls;
        s.fallback = Fallback::new(&self.config.fallback);
        s.mtu = Some(plan);
        if s.advertised.is_none() {
            s.advertised = Some(mtu::Advertised::of(&plan));
        }
        s.phase = Phase::Connected;
        s.last_data = now;
        s.ever_connected = true;
        if !first {
            s.reconnects += 1;
        }
        let w = who(s);
        let mut ev = Vec::new();
        if first {
            ev.push(syslog::address_722051(w, address));
            ev.push(syslog::first_722033(w, Channel::Tls));
        } else if replacing {
            ev.push(syslog::replacing_722032(w, Channel::Tls));
            ev.push(syslog::stale_722028(w));
        } else if after_drop {
            ev.push(syslog::resumed_716059(w, w.peer));
            ev.push(syslog::new_no_existing_722034(w, Channel::Tls));
        }
        ev.push(syslog::svc_established_722022(w, Channel::Tls));
        let up = Event::SessionUp {
            session: id,
            user: s.user.clone(),
            tunnel_group: s.tunnel_group.clone(),
            group_policy: s.group_policy.clone(),
            address,
            reconnect: !first,
        };
        if !first {
            self.stats.reconnects += 1;
        }
        self.events.extend(ev.into_iter().map(Event::Syslog));
        self.events.push_back(up);
        self.reschedule(id);
        HttpOutcome::Tunnel {
            consumed,
            bytes,
            session: id,
            dtls,
        }
    }

    fn lease(&mut self, id: SessionId, want: Option<Ipv4Addr>) -> Option<Ipv4Addr> {
        let tg = self.sessions.get(&id)?.tunnel_group.clone();
        let group = self.config.group(&tg)?.clone();
        let pools: Vec<_> = group
            .address_pools
            .iter()
            .filter_map(|p| self.config.pools.get(p))
            .cloned()
            .collect();
        let free = |a: Ipv4Addr, by: &HashMap<Ipv4Addr, SessionId>| !by.contains_key(&a);
        let mut pick = None;
        if let Some(w) = want {
            if pools
                .iter()
                .any(|p| u32::from(p.first) <= u32::from(w) && u32::from(w) <= u32::from(p.last))
                && free(w, &self.by_addr)
            {
                pick = Some(w);
            }
        }
        if pick.is_none() {
            'outer: for p in &pools {
                for a in u32::from(p.first)..=u32::from(p.last) {
                    let a = Ipv4Addr::from(a);
                    if free(a, &self.by_addr) {
                        pick = Some(a);
                        break 'outer;
                    }
                }
            }
        }
        let a = pick?;
        self.by_addr.insert(a, id);
        if let Some(s) = self.sessions.get_mut(&id) {
            s.address = Some(a);
        }
        Some(a)
    }

    fn netmask_for(&mut self, id: SessionId, a: Ipv4Addr) -> Ipv4Addr {
        let Some(s) = self.sessions.get(&id) else {
            return Ipv4Addr::BROADCAST;
        };
        let mask = self
            .config
            .group(&s.tunnel_group)
            .and_then(|g| {
                g.address_pools
                    .iter()
                    .filter_map(|p| self.config.pools.get(p))
                    .find(|p| {
                        u32::from(p.first) <= u32::from(a) && u32::from(a) <= u32::from(p.last)
                    })
            })
            .map_or(Ipv4Addr::BROADCAST, |p| p.mask);
        if let Some(s) = self.sessions.get_mut(&id) {
            s.netmask = mask;
        }
        mask
    }

    // -----------------------------------------------------------------------------------
    // Tunnel phase

    /// CSTP bytes from the session's TLS connection (any split). Data packets appear on
    /// [`Server::poll_packet`]; DPD answers on [`Server::poll_transmit`].
    pub fn handle_tls_data(
        &mut self,
        now: Instant,
        session: SessionId,
        data: &[u8],
    ) -> Result<(), TunnelError> {
        self.reset_output();
        let tcpmss = self.config.tcpmss;
        let Server {
            sessions,
            pkt_buf,
            pkt_q,
            stats,
            ..
        } = self;
        let s = sessions
            .get_mut(&session)
            .ok_or(TunnelError::UnknownSession(session))?;
        let Some(tls) = s.tls.as_mut() else {
            return Err(TunnelError::UnknownSession(session));
        };
        tls.last_rx = now;
        tls.dpd_sent = None;
        let clamp = clamp_value(tcpmss, s.mtu.map(|m| adapter_mtu(&m)));
        let mut controls: Vec<Control> = Vec::new();
        let mut rx_bytes = 0u64;
        let mut rx_pkts = 0u64;
        let base = data.as_ptr() as usize;
        let r = tls.decoder.feed(data, |f| match f.ty {
            FrameType::Data => {
                if !f.payload.is_empty() {
                    let start = pkt_buf.len();
                    pkt_buf.extend_from_slice(f.payload);
                    clamp_syn(&mut pkt_buf[start..], clamp);
                    pkt_q.push_back((session, start, pkt_buf.len()));
                    rx_bytes += f.payload.len() as u64;
                    rx_pkts += 1;
                }
            }
            FrameType::DpdReq => {
                // Echo the payload: a view into `data` when possible, else copy it aside.
                let p = f.payload.as_ptr() as usize;
                if p >= base && p + f.payload.len() <= base + data.len() {
                    controls.push(Control::DpdReq(p - base, f.payload.len()));
                } else {
                    controls.push(Control::DpdReqOwned(f.payload.to_vec()));
                }
            }
            FrameType::DpdResp => controls.push(Control::DpdResp),
            FrameType::Keepalive => {}
            FrameType::Disconnect => controls.push(Control::Disconnect(f.payload.first().copied())),
            FrameType::Terminate => controls.push(Control::Terminate),
            FrameType::Compressed | FrameType::Unknown(_) => controls.push(Control::Dropped),
        });
        stats.packets_from_clients += rx_pkts;
        s.bytes_rx += rx_bytes;
        if rx_pkts > 0 {
            s.last_data = now;
        }
        if let Err(e) = r {
            stats.cstp_errors += 1;
            let w = who(s);
            let line = syslog::closing_722037(w, &format!("CSTP framing error ({e})"));
            self.events.push_back(Event::Syslog(line));
            self.reschedule(session);
            return Err(TunnelError::Cstp(e));
        }
        for c in controls {
            match c {
                Control::DpdReq(off, len) => {
                    self.queue_frame(
                        session,
                        Channel::Tls,
                        FrameType::DpdResp,
                        &data[off..off + len],
                    );
                }
                Control::DpdReqOwned(p) => {
                    self.queue_frame(session, Channel::Tls, FrameType::DpdResp, &p)
                }
                Control::DpdResp | Control::Dropped => {}
                Control::Disconnect(code) => {
                    self.client_disconnect(now, session, code == Some(DISCONNECT_LOGOUT));
                    return Ok(());
                }
                Control::Terminate => {
                    self.client_disconnect(now, session, true);
                    return Ok(());
                }
            }
        }
        self.reschedule(session);
        Ok(())
    }

    /// The session's TLS connection closed (EOF, error, or after [`TunnelError::Cstp`]). The
    /// session waits `reconnect_grace` for a CONNECT with its cookie.
    pub fn handle_tls_closed(&mut self, now: Instant, session: SessionId) {
        self.reset_output();
        self.handle_tls_closed_inner(now, session);
        self.reschedule(session);
    }

    /// The DTLS handshake for `session` completed: DTLS becomes the server->client channel.
    pub fn handle_dtls_up(&mut self, now: Instant, session: SessionId) {
        self.reset_output();
        let ft = self.config.fallback.clone();
        let Some(s) = self.sessions.get_mut(&session) else {
            return;
        };
        if !matches!(s.phase, Phase::Connected) || s.dtls.keying.is_none() {
            return;
        }
        s.dtls.up = true;
        s.dtls.last_rx = Some(now);
        s.fallback = Fallback::new(&ft);
        s.fallback.last_confirmed = Some(now);
        let w = who(s);
        self.events
            .push_back(Event::Syslog(syslog::svc_established_722022(
                w,
                Channel::Dtls,
            )));
        if s.tx != Channel::Dtls {
            s.tx = Channel::Dtls;
            self.events.push_back(Event::ChannelChange {
                session,
                channel: Channel::Dtls,
            });
        }
        self.reschedule(session);
    }

    /// One decrypted DTLS record (type byte + payload) from the session's client.
    pub fn handle_dtls_record(
        &mut self,
        now: Instant,
        session: SessionId,
        record: &[u8],
    ) -> Result<(), TunnelError> {
        self.reset_output();
        let tcpmss = self.config.tcpmss;
        let s = self
            .sessions
            .get_mut(&session)
            .ok_or(TunnelError::UnknownSession(session))?;
        if !s.dtls.up {
            return Err(TunnelError::UnknownSession(session));
        }
        let Some((&ty, payload)) = record.split_first() else {
            self.stats.dtls_bad_records += 1;
            return Err(TunnelError::BadDtlsRecord);
        };
        s.dtls.last_rx = Some(now);
        s.fallback.unconfirmed_since = None;
        match FrameType::from_u8(ty) {
            FrameType::Data => {
                if payload.is_empty() {
                    return Ok(());
                }
                let clamp = clamp_value(tcpmss, s.mtu.map(|m| adapter_mtu(&m)));
                let start = self.pkt_buf.len();
                self.pkt_buf.extend_from_slice(payload);
                clamp_syn(&mut self.pkt_buf[start..], clamp);
                self.pkt_q.push_back((session, start, self.pkt_buf.len()));
                s.bytes_rx += payload.len() as u64;
                s.last_data = now;
                self.stats.packets_from_clients += 1;
                // The client is using DTLS; if we had fallen back, check the way back now.
                if s.tx == Channel::Tls && s.fallback.probe_deadline.is_none() {
                    self.send_probe(now, session);
                }
            }
            FrameType::DpdReq => {
                self.queue_frame(session, Channel::Dtls, FrameType::DpdResp, payload);
            }
            FrameType::DpdResp => {
                let s = self.sessions.get_mut(&session).expect("checked");
                // RTT sample only from the answer to the outstanding probe (payload = its seq).
                if let Some(sent) = s.fallback.probe_sent.take() {
                    if payload == s.fallback.probe_seq.to_be_bytes() {
                        let sample = now.saturating_duration_since(sent);
                        s.fallback.srtt = Some(match s.fallback.srtt {
                            None => sample,
                            Some(r) => (r * 7 + sample) / 8, // RFC 6298 §2.3, alpha = 1/8
                        });
                    }
                }
                s.fallback.probe_deadline = None;
                s.fallback.last_confirmed = Some(now);
                s.fallback.next_reprobe = None;
                s.fallback.reprobe_interval = self.config.fallback.reprobe_min;
                if s.tx == Channel::Tls {
                    s.tx = Channel::Dtls;
                    self.stats.returns_to_dtls += 1;
                    self.events.push_back(Event::ChannelChange {
                        session,
                        channel: Channel::Dtls,
                    });
                }
            }
            FrameType::Keepalive => {}
            FrameType::Disconnect => {
                let logout = payload.first() == Some(&DISCONNECT_LOGOUT);
                self.client_disconnect(now, session, logout);
                return Ok(());
            }
            FrameType::Terminate => {
                self.client_disconnect(now, session, true);
                return Ok(());
            }
            FrameType::Compressed | FrameType::Unknown(_) => {
                self.stats.dtls_bad_records += 1;
                self.reschedule(session);
                return Err(TunnelError::BadDtlsRecord);
            }
        }
        self.reschedule(session);
        Ok(())
    }

    /// The session's DTLS association ended (alert, error, client gave up). Traffic moves to
    /// TLS; the keying stays, so the client's next DTLS handshake (same App-ID or session ID)
    /// still demultiplexes to this session, and `handle_dtls_up` moves traffic back.
    pub fn handle_dtls_closed(&mut self, now: Instant, session: SessionId) {
        self.reset_output();
        let _ = now;
        self.drop_dtls(session, false);
        self.reschedule(session);
    }

    /// An IPv4 packet from the TUN. `pkt` may be modified in place (MSS clamp). On success the
    /// framed packet (or its fragments) is on [`Server::poll_transmit`]; an ICMP
    /// fragmentation-needed answer, if any, is on [`Server::poll_packet`].
    pub fn handle_tun_packet(&mut self, now: Instant, pkt: &mut [u8]) -> Result<(), TunDrop> {
        self.reset_output();
        let (dst, src, df, total, protocol) = match Ipv4Packet::new_checked(&pkt[..]) {
            Ok(ip) => (
                ip.dst(),
                ip.src(),
                ip.dont_frag(),
                ip.total_len(),
                ip.protocol(),
            ),
            Err(_) => {
                self.stats.tun_no_session += 1;
                return Err(TunDrop::Malformed);
            }
        };
        let pkt = &mut pkt[..total];
        let Some(&id) = self.by_addr.get(&dst) else {
            self.stats.tun_no_session += 1;
            return Err(TunDrop::NoSession);
        };
        let tcpmss = self.config.tcpmss;
        let s = self.sessions.get_mut(&id).ok_or(TunDrop::NoSession)?;
        let Some(plan) = s.mtu else {
            self.stats.tun_no_channel += 1;
            return Err(TunDrop::NoChannel);
        };
        if s.tls.is_none() {
            self.stats.tun_no_channel += 1;
            return Err(TunDrop::NoChannel);
        }
        let clamped = clamp_syn(pkt, clamp_value(tcpmss, Some(adapter_mtu(&plan))));
        if clamped {
            self.stats.mss_clamped += 1;
        }
        let mut ch = if s.dtls.up { s.tx } else { Channel::Tls };
        let threshold = |c: Channel| match c {
            Channel::Dtls => plan.dtls.unwrap_or(plan.tls),
            Channel::Tls => plan.tls,
        };
        let len = pkt.len();
        // A packet too big for DTLS but fitting TLS goes on TLS as it is (ocserv does the same).
        if ch == Channel::Dtls
            && len > threshold(Channel::Dtls) as usize
            && len <= plan.tls as usize
        {
            ch = Channel::Tls;
            self.stats.sent_on_tls_too_big_for_dtls += 1;
        }
        let th = threshold(ch);
        s.last_data = now;
        s.bytes_tx += len as u64;
        if ch == Channel::Dtls {
            s.fallback.last_tx = Some(now);
            if s.fallback.unconfirmed_since.is_none() {
                s.fallback.unconfirmed_since = Some(now);
            }
        }
        if len <= th as usize {
            let ty = FrameType::Data;
            self.queue_frame(id, ch, ty, pkt);
            self.stats.packets_to_clients += 1;
            self.reschedule(id);
            return Ok(());
        }
        if !df || s.policy.df_bit_ignore {
            let Server {
                tx_buf,
                tx_q,
                stats,
                ..
            } = self;
            let r = crate::frag::fragment_ipv4(pkt, th, |h, b| {
                let start = tx_buf.len();
                match ch {
                    Channel::Tls => {
                        let mut hd = [0u8; cstp::HEADER_LEN];
                        cstp::write_header(&mut hd, FrameType::Data, (h.len() + b.len()) as u16);
                        tx_buf.extend_from_slice(&hd);
                    }
                    Channel::Dtls => tx_buf.push(FrameType::Data.to_u8()),
                }
                tx_buf.extend_from_slice(h);
                tx_buf.extend_from_slice(b);
                tx_q.push_back((id, ch, start, tx_buf.len()));
                stats.packets_to_clients += 1;
            });
            self.reschedule(id);
            return match r {
                Ok(_) => {
                    self.stats.fragmented += 1;
                    Ok(())
                }
                Err(_) => Err(TunDrop::Malformed),
            };
        }
        // DF set and df-bit-ignore off: drop, tell the sender (RFC 1191), log like the ASA.
        // Both are rate limited per session (RFC 1812 §4.3.2.8 for the ICMP): a sender
        // bursting oversize packets gets at most 100 ICMP/s and 10 log pairs/s.
        s.bytes_tx -= len as u64;
        self.stats.too_big_dropped += 1;
        let icmp_ok = s
            .too_big_icmp
            .is_none_or(|t| now >= t + TOO_BIG_ICMP_INTERVAL);
        let log_ok = s
            .too_big_log
            .is_none_or(|t| now >= t + TOO_BIG_LOG_INTERVAL);
        if log_ok {
            s.too_big_log = Some(now);
            let w = who(s);
            self.events
                .push_back(Event::Syslog(syslog::large_packet_722036(w, len, th)));
        } else {
            self.stats.too_big_logs_suppressed += 1;
        }
        if !icmp_ok {
            self.stats.icmp_suppressed += 1;
        } else {
            s.too_big_icmp = Some(now);
            let from = self.config.icmp_source.unwrap_or(dst);
            let start = self.pkt_buf.len();
            self.pkt_buf.resize(start + wire::ip::ICMP_ERROR_MAX_LEN, 0);
            let code = wire::ip::unreach_code::FRAG_NEEDED;
            match wire::ip::build_dest_unreachable(pkt, code, th, from, &mut self.pkt_buf[start..])
            {
                Some(n) => {
                    self.pkt_buf.truncate(start + n);
                    self.pkt_q.push_back((id, start, start + n));
                    self.stats.icmp_sent += 1;
                    if log_ok {
                        let line = syslog::pmtud_602101(len, th, src, dst, protocol);
                        self.events.push_back(Event::Syslog(line));
                    }
                }
                None => self.pkt_buf.truncate(start),
            }
        }
        self.reschedule(id);
        Err(TunDrop::TooBig)
    }

    /// Runs everything due at `now` (DTLS probes and fallback, DPD, timeouts, grace expiry).
    pub fn handle_timeout(&mut self, now: Instant) {
        self.reset_output();
        self.expire_pending(now);
        while let Some(&(t, id)) = self.timers.first() {
            if t > now {
                break;
            }
            self.timers.remove(&(t, id));
            if let Some(s) = self.sessions.get_mut(&id) {
                s.wake = None;
            }
            self.on_timer(now, id);
            self.reschedule(id);
        }
    }

    fn on_timer(&mut self, now: Instant, id: SessionId) {
        let grace = self.config.reconnect_grace;
        let ft = self.config.fallback.clone();
        let Some(s) = self.sessions.get_mut(&id) else {
            return;
        };
        match s.phase {
            Phase::AwaitingConnect { expires } => {
                if now >= expires {
                    self.end_session(now, id, DisconnectReason::IdleTimeout, None);
                }
                return;
            }
            Phase::Disconnected { since } => {
                if now >= since + grace {
                    self.end_session(now, id, DisconnectReason::IdleTimeout, None);
                }
                return;
            }
            Phase::Connected => {}
        }
        if let Some(i) = s.policy.idle_timeout {
            if now >= s.last_data + i {
                self.end_session(
                    now,
                    id,
                    DisconnectReason::IdleTimeout,
                    Some(FrameType::Disconnect),
                );
                return;
            }
        }
        if let Some(t) = s.policy.session_timeout {
            if now >= s.created + t {
                self.end_session(
                    now,
                    id,
                    DisconnectReason::MaxTimeExceeded,
                    Some(FrameType::Disconnect),
                );
                return;
            }
        }
        if let (Some(tls), Some(dpd)) = (s.tls.as_mut(), s.policy.dpd_gateway) {
            if now >= tls.last_rx + dpd * 3 {
                // Gateway DPD failed: the TLS connection is dead; keep the session for a reconnect.
                let w = who(s);
                self.events
                    .push_back(Event::Syslog(syslog::closing_722037(w, "DPD failure")));
                self.events.push_back(Event::CloseTls { session: id });
                self.handle_tls_closed_inner(now, id);
                return;
            }
            if tls.dpd_sent.is_none() && now >= tls.last_rx + dpd {
                tls.dpd_sent = Some(now);
                self.queue_frame(id, Channel::Tls, FrameType::DpdReq, &[]);
            }
        }
        let Some(s) = self.sessions.get_mut(&id) else {
            return;
        };
        if !s.dtls.up {
            return;
        }
        if let Some(d) = s.fallback.probe_deadline {
            if now >= d {
                s.fallback.probe_deadline = None;
                s.fallback.unconfirmed_since = None;
                if s.tx == Channel::Dtls {
                    // DTLS stopped delivering: move server->client traffic to TLS now.
                    s.tx = Channel::Tls;
                    s.fallbacks += 1;
                    s.fallback.reprobe_interval = ft.reprobe_min;
                    s.fallback.next_reprobe = Some(now + ft.reprobe_min);
                    self.stats.fallbacks_to_tls += 1;
                    self.events.push_back(Event::ChannelChange {
                        session: id,
                        channel: Channel::Tls,
                    });
                } else {
                    let next = (s.fallback.reprobe_interval * 2).min(ft.reprobe_max);
                    s.fallback.reprobe_interval = next;
                    s.fallback.next_reprobe = Some(now + next);
                }
            }
            return;
        }
        if s.tx == Channel::Dtls {
            let silent = s
                .fallback
                .unconfirmed_since
                .is_some_and(|u| now >= u + ft.probe_after);
            let verify = s.fallback.verify_due(&ft).is_some_and(|v| now >= v);
            if silent || verify {
                self.send_probe(now, id);
            }
        } else if s.fallback.next_reprobe.is_some_and(|r| now >= r) {
            s.fallback.next_reprobe = None;
            self.send_probe(now, id);
        }
    }

    fn send_probe(&mut self, now: Instant, id: SessionId) {
        let ft = &self.config.fallback;
        let Some(s) = self.sessions.get_mut(&id) else {
            return;
        };
        // Wait 4 x the smoothed probe RTT, within [probe_timeout, probe_timeout_max]: a slow
        // path is not mistaken for a dead one, and detection stays within 2 s.
        let to = s.fallback.srtt.map_or(ft.probe_timeout, |r| {
            (r * 4).clamp(ft.probe_timeout, ft.probe_timeout_max.max(ft.probe_timeout))
        });
        s.fallback.probe_seq = s.fallback.probe_seq.wrapping_add(1);
        s.fallback.probe_deadline = Some(now + to);
        s.fallback.probe_sent = Some(now);
        let seq = s.fallback.probe_seq.to_be_bytes();
        self.queue_frame(id, Channel::Dtls, FrameType::DpdReq, &seq);
    }

    fn handle_tls_closed_inner(&mut self, now: Instant, id: SessionId) {
        let Some(s) = self.sessions.get_mut(&id) else {
            return;
        };
        let Some(tls) = s.tls.take() else {
            return;
        };
        // Bytes of a frame that never completed: the client (or a middlebox) cut the
        // connection mid-frame. They are discarded; say so before the disconnect lines.
        let partial = tls.decoder.buffered();
        if partial > 0 {
            let line = syslog::closing_722037(
                who(s),
                &format!("connection closed inside a CSTP frame, {partial} byte(s) of a truncated frame discarded"),
            );
            self.events.push_back(Event::Syslog(line));
        }
        s.phase = Phase::Disconnected { since: now };
        let address = s.address;
        self.events.push_back(Event::SessionDisconnected { session: id, address });
        let Some(s) = self.sessions.get(&id) else {
            return;
        };
        let w = who(s);
        self.events
            .push_back(Event::Syslog(syslog::svc_terminated_722023(
                w,
                Channel::Tls,
            )));
        self.drop_dtls(id, true);
        if let Some(s) = self.sessions.get(&id) {
            let line = syslog::waiting_to_resume_716058(who(s));
            self.events.push_back(Event::Syslog(line));
        }
    }

    /// DISCONNECT/TERMINATE from the client. Logout ends the session; otherwise the client
    /// intends to reconnect: the session waits in its grace period.
    fn client_disconnect(&mut self, now: Instant, id: SessionId, logout: bool) {
        if logout {
            self.end_session(now, id, DisconnectReason::UserRequested, None);
        } else {
            self.events.push_back(Event::CloseTls { session: id });
            self.handle_tls_closed_inner(now, id);
            self.reschedule(id);
        }
    }

    /// The DTLS association is gone. `tell_io`: the engine decided it (the I/O layer must
    /// close it); otherwise the I/O layer reported it and the keying (App-ID / session ID and
    /// master secret) stays, because the client re-handshakes with the same keying for as
    /// long as its CSTP connection lives (openconnect retries DTLS every 60 s). The keying is
    /// forgotten only with the TLS connection it was issued on.
    fn drop_dtls(&mut self, id: SessionId, tell_io: bool) {
        let Some(s) = self.sessions.get_mut(&id) else {
            return;
        };
        let was_up = s.dtls.up;
        if tell_io {
            if let Some(k) = s.dtls.keying.take() {
                self.by_demux.remove(k.demux_id());
            }
            s.dtls = DtlsChannel::default();
        } else {
            s.dtls.up = false;
            s.dtls.last_rx = None;
        }
        s.fallback.probe_deadline = None;
        s.fallback.unconfirmed_since = None;
        s.fallback.next_reprobe = None;
        let moved = s.tx == Channel::Dtls;
        s.tx = Channel::Tls;
        if was_up {
            let w = who(s);
            self.events
                .push_back(Event::Syslog(syslog::svc_terminated_722023(
                    w,
                    Channel::Dtls,
                )));
            if tell_io {
                self.events.push_back(Event::CloseDtls { session: id });
            }
            if moved {
                self.events.push_back(Event::ChannelChange {
                    session: id,
                    channel: Channel::Tls,
                });
            }
        }
    }

    /// Ends a session: optional final CSTP frame, close events, syslog, lease release.
    fn end_session(
        &mut self,
        now: Instant,
        id: SessionId,
        reason: DisconnectReason,
        notify: Option<FrameType>,
    ) {
        let Some(s) = self.sessions.get(&id) else {
            return;
        };
        let tls_up = s.tls.is_some();
        if tls_up {
            if let Some(ty) = notify {
                let payload: &[u8] = match ty {
                    FrameType::Disconnect => &[0x00],
                    _ => &[],
                };
                let mut p = payload.to_vec();
                if ty == FrameType::Disconnect {
                    p.extend_from_slice(reason.text().as_bytes());
                }
                self.queue_frame(id, Channel::Tls, ty, &p);
                let w = who(&self.sessions[&id]);
                self.events
                    .push_back(Event::Syslog(syslog::closing_722037(w, reason.text())));
            }
        }
        self.drop_dtls(id, true);
        let Some(s) = self.sessions.remove(&id) else {
            return;
        };
        if let Some(t) = s.wake {
            self.timers.remove(&(t, id));
        }
        let w = who(&s);
        if s.tls.is_some() {
            self.events
                .push_back(Event::Syslog(syslog::svc_terminated_722023(
                    w,
                    Channel::Tls,
                )));
            self.events.push_back(Event::CloseTls { session: id });
        }
        self.events
            .push_back(Event::Syslog(syslog::session_terminated_716002(w, reason)));
        self.events
            .push_back(Event::Syslog(syslog::disconnected_113019(
                &s.group_policy,
                &s.user,
                s.peer.ip(),
                now.saturating_duration_since(s.created),
                s.bytes_tx,
                s.bytes_rx,
                reason,
            )));
        self.by_cookie.remove(&s.cookie_prefix);
        if let Some(a) = s.address {
            if self.by_addr.get(&a) == Some(&id) {
                self.by_addr.remove(&a);
            }
        }
        self.events.push_back(Event::SessionDown {
            session: id,
            address: s.address,
            reason,
        });
    }

    // -----------------------------------------------------------------------------------
    // Output

    /// Next bytes for a client. Borrowed until the next call into the engine.
    pub fn poll_transmit(&mut self) -> Option<Transmit<'_>> {
        match self.tx_q.pop_front() {
            Some((session, channel, a, b)) => Some(Transmit {
                session,
                channel,
                data: &self.tx_buf[a..b],
            }),
            None => {
                self.tx_buf.clear();
                None
            }
        }
    }

    /// Next IP packet for the TUN (from a client, or an ICMP error we generated).
    pub fn poll_packet(&mut self) -> Option<TunPacket<'_>> {
        match self.pkt_q.pop_front() {
            Some((session, a, b)) => Some(TunPacket {
                session,
                data: &self.pkt_buf[a..b],
            }),
            None => {
                self.pkt_buf.clear();
                None
            }
        }
    }

    pub fn poll_event(&mut self) -> Option<Event> {
        self.events.pop_front()
    }

    /// When to call [`Server::handle_timeout`] next.
    pub fn poll_timeout(&self) -> Option<(Instant, TimerReason)> {
        self.timers
            .first()
            .map(|&(t, id)| (t, TimerReason::Session(id)))
    }

    // -----------------------------------------------------------------------------------
    // Lookups and operator commands

    /// DTLS demultiplexing: the session whose X-DTLS-App-ID (PSK mode) is `id`.
    pub fn session_by_app_id(&self, id: &[u8]) -> Option<SessionId> {
        let s = self.session_by_demux(id)?;
        matches!(
            self.sessions.get(&s)?.dtls.keying,
            Some(DtlsKeying::Psk { .. })
        )
        .then_some(s)
    }

    /// DTLS demultiplexing: the session whose X-DTLS-Session-ID (legacy mode) is `id`.
    pub fn session_by_dtls_session_id(&self, id: &[u8]) -> Option<SessionId> {
        let s = self.session_by_demux(id)?;
        matches!(
            self.sessions.get(&s)?.dtls.keying,
            Some(DtlsKeying::Legacy { .. })
        )
        .then_some(s)
    }

    fn session_by_demux(&self, id: &[u8]) -> Option<SessionId> {
        let k: [u8; 32] = id.try_into().ok()?;
        self.by_demux.get(&k).copied()
    }

    /// How to key the DTLS channel of a session (after a demux lookup).
    pub fn dtls_keying(&self, session: SessionId) -> Option<&DtlsKeying> {
        self.sessions.get(&session)?.dtls.keying.as_ref()
    }

    /// The session leasing `addr`.
    pub fn session_by_address(&self, addr: Ipv4Addr) -> Option<SessionId> {
        self.by_addr.get(&addr).copied()
    }

    /// `vpn-sessiondb logoff name USER | index N | all`: returns how many sessions ended. The
    /// clients get a CSTP DISCONNECT (they do not reconnect) and the connections close.
    pub fn logoff(&mut self, now: Instant, target: Logoff) -> usize {
        self.reset_output();
        let ids: Vec<SessionId> = self
            .sessions
            .values()
            .filter(|s| match &target {
                Logoff::Name(n) => &s.user == n,
                Logoff::Index(i) => s.id.0 == *i,
                Logoff::All => true,
            })
            .map(|s| s.id)
            .collect();
        for id in &ids {
            self.end_session(
                now,
                *id,
                DisconnectReason::AdministratorReset,
                Some(FrameType::Disconnect),
            );
        }
        ids.len()
    }

    /// Gateway shutdown: TERMINATE to every client, end every session.
    pub fn shutdown(&mut self, now: Instant) {
        self.reset_output();
        let ids: Vec<SessionId> = self.sessions.keys().copied().collect();
        for id in ids {
            self.end_session(
                now,
                id,
                DisconnectReason::AdministratorReboot,
                Some(FrameType::Terminate),
            );
        }
    }

    /// How many sessions exist (logged in, connected or waiting for a reconnect).
    pub fn session_count(&self) -> usize {
        self.sessions.len()
    }

    /// All sessions, by index.
    pub fn sessions(&self, now: Instant) -> Vec<SessionInfo> {
        let mut v: Vec<SessionInfo> = self.sessions.values().map(|s| info(s, now)).collect();
        v.sort_by_key(|s| s.index);
        v
    }

    /// `show vpn-sessiondb anyconnect` (only sessions with an address, as the ASA lists
    /// tunnels, not pending cookies).
    pub fn show_vpn_sessiondb_anyconnect(&self, now: Instant, wall_now: SystemTime) -> String {
        let v: Vec<SessionInfo> = self
            .sessions(now)
            .into_iter()
            .filter(|s| s.assigned_ip != Ipv4Addr::UNSPECIFIED)
            .collect();
        text::show_vpn_sessiondb_anyconnect(&v, wall_now)
    }

    /// `show vpn-sessiondb anyconnect filter name USER | ipaddress IP` (an index filter too).
    pub fn show_vpn_sessiondb_anyconnect_filter(
        &self,
        now: Instant,
        wall_now: SystemTime,
        filter: &crate::ShowFilter,
    ) -> String {
        let v: Vec<SessionInfo> = self
            .sessions(now)
            .into_iter()
            .filter(|s| s.assigned_ip != Ipv4Addr::UNSPECIFIED)
            .filter(|s| match filter {
                crate::ShowFilter::Name(n) => &s.username == n,
                crate::ShowFilter::IpAddress(a) => {
                    s.assigned_ip == *a || s.public_ip.ip() == IpAddr::V4(*a)
                }
                crate::ShowFilter::Index(i) => s.index.0 == *i,
            })
            .collect();
        text::show_vpn_sessiondb_anyconnect(&v, wall_now)
    }

    /// Sessions for a restart or failover. Connections are not carried: after [`Server::restore`]
    /// every session waits for its client to reconnect with the cookie.
    pub fn snapshot(&self, now: Instant) -> Snapshot {
        let mut sessions: Vec<SessionSnapshot> = self
            .sessions
            .values()
            .map(|s| SessionSnapshot {
                index: s.id.0,
                cookie_tag: s.cookie_tag,
                user: s.user.clone(),
                tunnel_group: s.tunnel_group.clone(),
                group_policy: s.group_policy.clone(),
                policy: s.policy.clone(),
                peer: s.peer,
                address: s.address,
                netmask: s.netmask,
                age: now.saturating_duration_since(s.created),
                bytes_tx: s.bytes_tx,
                bytes_rx: s.bytes_rx,
                reconnects: s.reconnects,
                ever_connected: s.ever_connected,
                advertised: s.advertised,
                disconnected_for: match s.phase {
                    Phase::Disconnected { since } => Some(now.saturating_duration_since(since)),
                    _ => None,
                },
            })
            .collect();
        sessions.sort_by_key(|s| s.index);
        Snapshot {
            cookie_key: self.cookie_key_bytes,
            next_index: self.next_index,
            sessions,
        }
    }

    /// Rebuilds an engine from a [`Snapshot`]: cookies stay valid, leases stay held, and each
    /// session gets a fresh reconnect grace from `now`.
    pub fn restore(
        now: Instant,
        config: Config,
        rng: Box<dyn crypto::Random>,
        snap: &Snapshot,
    ) -> Self {
        let mut srv = Self::with_key(config, rng, snap.cookie_key, snap.next_index);
        for p in &snap.sessions {
            let id = SessionId(p.index);
            let created = now.checked_sub(p.age).unwrap_or(now);
            let s = Session {
                id,
                cookie_prefix: tag_prefix(&p.cookie_tag),
                cookie_tag: p.cookie_tag,
                user: p.user.clone(),
                tunnel_group: p.tunnel_group.clone(),
                group_policy: p.group_policy.clone(),
                policy: p.policy.clone(),
                peer: p.peer,
                address: p.address,
                netmask: p.netmask,
                created,
                last_data: now,
                // A session that was connected when the snapshot was taken lost its connection
                // then: its grace runs from that moment (the downtime counts, see
                // `Snapshot::aged`), so a long outage ends it with the ordinary reason.
                phase: if p.ever_connected {
                    Phase::Disconnected {
                        since: now
                            .checked_sub(p.disconnected_for.unwrap_or_default())
                            .unwrap_or(now),
                    }
                } else {
                    Phase::AwaitingConnect {
                        expires: now + srv.config.cookie_unused_lifetime,
                    }
                },
                tls: None,
                dtls: DtlsChannel::default(),
                tx: Channel::Tls,
                fallback: Fallback::new(&srv.config.fallback),
                mtu: None,
                bytes_tx: p.bytes_tx,
                bytes_rx: p.bytes_rx,
                reconnects: p.reconnects,
                fallbacks: 0,
                ever_connected: p.ever_connected,
                wake: None,
                too_big_icmp: None,
                too_big_log: None,
                advertised: p.advertised,
            };
            srv.by_cookie.insert(tag_prefix(&p.cookie_tag), id);
            if let Some(a) = p.address {
                srv.by_addr.insert(a, id);
            }
            srv.sessions.insert(id, s);
            srv.reschedule(id);
        }
        srv
    }

    // -----------------------------------------------------------------------------------
    // Helpers

    fn alloc_index(&mut self) -> SessionId {
        loop {
            let i = self.next_index;
            self.next_index = self.next_index.wrapping_add(1).max(1);
            if !self.sessions.contains_key(&SessionId(i)) {
                return SessionId(i);
            }
        }
    }

    /// HMAC-SHA256 of a cookie under the engine's cookie key (what a session stores).
    fn cookie_tag(&self, cookie: &[u8; 32]) -> [u8; 32] {
        let mut tag = [0u8; 32];
        tag.copy_from_slice(hmac::sign(&self.cookie_key, cookie).as_ref());
        tag
    }

    fn refused(&mut self, peer: SocketAddr, reason: String) {
        self.events.push_back(Event::Refused { peer, reason });
    }

    /// Refuses a request: reports `reason` ([`Event::Refused`]), answers `status` with `body`
    /// as plain text and closes the connection.
    fn refuse(
        &mut self,
        peer: SocketAddr,
        reason: String,
        consumed: usize,
        status: (u16, &'static str),
        body: &str,
    ) -> HttpOutcome {
        self.refused(peer, reason);
        closing_response(consumed, status, body)
    }

    /// A certificate-only group (or aaa+certificate) and the TLS layer verified no client
    /// certificate.
    fn refuse_no_certificate(&mut self, peer: SocketAddr, group: &str, consumed: usize) -> HttpOutcome {
        self.stats.auth_failures += 1;
        self.refuse(
            peer,
            format!("login refused: group '{group}' needs a client certificate"),
            consumed,
            (401, "Unauthorized"),
            "client certificate required",
        )
    }

    /// Output buffers are reused: once everything queued was drained, start them over.
    fn reset_output(&mut self) {
        if self.tx_q.is_empty() {
            self.tx_buf.clear();
        }
        if self.pkt_q.is_empty() {
            self.pkt_buf.clear();
        }
    }

    fn queue_frame(&mut self, id: SessionId, ch: Channel, ty: FrameType, payload: &[u8]) {
        let start = self.tx_buf.len();
        match ch {
            Channel::Tls => cstp::encode_into(&mut self.tx_buf, ty, payload),
            Channel::Dtls => {
                self.tx_buf.push(ty.to_u8());
                self.tx_buf.extend_from_slice(payload);
            }
        }
        self.tx_q.push_back((id, ch, start, self.tx_buf.len()));
    }

    fn reschedule(&mut self, id: SessionId) {
        let grace = self.config.reconnect_grace;
        let Some(s) = self.sessions.get_mut(&id) else {
            return;
        };
        let next = s.next_deadline(grace, &self.config.fallback);
        // Timers only ever move earlier here. A deadline that moved later (every data packet
        // pushes the idle deadline) keeps the earlier wake-up: `on_timer` re-checks every
        // condition against `now`, so an early wake costs one check and the data path never
        // touches the timer set.
        match (s.wake, next) {
            (Some(old), Some(n)) if n >= old => return,
            (Some(_), None) => return,
            (None, None) => return,
            _ => {}
        }
        if let Some(old) = s.wake {
            self.timers.remove(&(old, id));
        }
        s.wake = next;
        if let Some(t) = next {
            self.timers.insert((t, id));
        }
    }
}

/// A plain-text answer after which the connection closes (refusals).
/// The answer when a new pending login does not fit its bounds.
fn unfinished_logins_refusal(consumed: usize) -> HttpOutcome {
    let r = Response::new(503, "Service Unavailable")
        .header("Connection", "close")
        .header("Retry-After", "30")
        .body("text/plain", "too many unfinished logins\n");
    HttpOutcome::Respond {
        consumed,
        bytes: r.to_bytes(),
        close: true,
    }
}

/// Random bytes in a pending login's handle (sent hex-encoded, as the `webvpncontext`
/// cookie and in the form's `<aggauth-handle>`).
const CONTEXT_BYTES: usize = 16;

/// Where a login step goes ([`Server::login_target`]).
struct LoginTarget {
    /// The live pending login the request continues.
    handle: Option<String>,
    /// The group to log in to (None: no tunnel group is configured).
    group: Option<TunnelGroup>,
    /// A group asked for by name that does not exist (the default group is used).
    unknown: Option<String>,
    /// An unknown group taken from the URL, for 716900.
    url_unknown: Option<String>,
}

fn closing_response(consumed: usize, (code, reason): (u16, &'static str), body: &str) -> HttpOutcome {
    let r = Response::new(code, reason)
        .header("Connection", "close")
        .body("text/plain", format!("{body}\n"));
    HttpOutcome::Respond {
        consumed,
        bytes: r.to_bytes(),
        close: true,
    }
}

/// The session lookup key: the first 8 bytes of a cookie's HMAC tag.
fn tag_prefix(tag: &[u8; 32]) -> [u8; 8] {
    let mut p = [0u8; 8];
    p.copy_from_slice(&tag[..8]);
    p
}

fn who(s: &Session) -> Who<'_> {
    Who {
        group_policy: &s.group_policy,
        user: &s.user,
        peer: s.peer.ip(),
    }
}

fn info(s: &Session, now: Instant) -> SessionInfo {
    let dtls_cipher = match &s.dtls.keying {
        Some(DtlsKeying::Legacy { cipher, .. }) => {
            let (e, h) = cipher.show_names();
            Some((e.to_string(), h.to_string()))
        }
        Some(DtlsKeying::Psk { .. }) => Some(("AES-GCM-256".to_string(), "SHA384".to_string())),
        None => None,
    };
    let inactivity = match s.phase {
        Phase::Disconnected { since } => now.saturating_duration_since(since),
        _ => Duration::ZERO,
    };
    SessionInfo {
        index: s.id,
        username: s.user.clone(),
        assigned_ip: s.address.unwrap_or(Ipv4Addr::UNSPECIFIED),
        public_ip: s.peer,
        tunnel_group: s.tunnel_group.clone(),
        group_policy: s.group_policy.clone(),
        tls_up: s.tls.is_some(),
        dtls_up: s.dtls.up,
        tx_channel: s
            .tls
            .as_ref()
            .map(|_| if s.dtls.up { s.tx } else { Channel::Tls }),
        tls_cipher: s.tls.as_ref().map_or_else(
            || ("none".into(), "none".into()),
            |t| text::show_cipher_names(&t.cipher),
        ),
        dtls_cipher,
        bytes_tx: s.bytes_tx,
        bytes_rx: s.bytes_rx,
        duration: now.saturating_duration_since(s.created),
        inactivity,
        mtu_tls: s.mtu.map_or(0, |m| m.tls),
        mtu_dtls: s.mtu.and_then(|m| m.dtls),
        mtu_advertised: s
            .mtu
            .map_or(0, |m| m.advertised_dtls.unwrap_or(m.advertised_cstp)),
        reconnects: s.reconnects,
        fallbacks: s.fallbacks,
    }
}

/// The MTU of the client's adapter: openconnect uses the larger of X-CSTP-MTU and X-DTLS-MTU.
fn adapter_mtu(p: &mtu::MtuPlan) -> u16 {
    p.advertised_dtls
        .map_or(p.advertised_cstp, |d| d.max(p.advertised_cstp))
}

/// The MSS a tunnelled SYN may carry: `sysopt connection tcpmss` and, so that a full segment
/// fits the client's adapter, the advertised MTU minus 40 (IPv4 + TCP headers).
fn clamp_value(tcpmss: u16, advertised: Option<u16>) -> Option<u16> {
    let by_mtu = advertised.map(|m| m.saturating_sub(40));
    match (tcpmss, by_mtu) {
        (0, m) => m,
        (t, Some(m)) => Some(t.min(m)),
        (t, None) => Some(t),
    }
}

/// Lowers the MSS option of a TCP SYN in place (crates/wire's clamp keeps the checksum right).
fn clamp_syn(pkt: &mut [u8], max: Option<u16>) -> bool {
    let Some(max) = max else { return false };
    let Ok(ip) = Ipv4Packet::new_checked(&*pkt) else {
        return false;
    };
    if ip.protocol() != proto::TCP || ip.frag_offset() != 0 {
        return false;
    }
    let (hl, tl) = (ip.header_len(), ip.total_len());
    let Some(seg) = pkt.get_mut(hl..tl) else {
        return false;
    };
    let Ok(mut tcp) = TcpPacket::new_checked(seg) else {
        return false;
    };
    if !tcp.syn() {
        return false;
    }
    tcp.clamp_mss(max).is_some()
}

/// A HEAD answer from the GET answer `step`: the status line and headers as they are
/// (Content-Length stays the GET body's, RFC 9110 §8.6), the content cut off. An init never
/// asks for a password check, so `step` is always a response.
fn head_of(step: HttpStep) -> HttpStep {
    match step {
        HttpStep::Done(o) => head_only(o).into(),
        other => other,
    }
}

/// [`head_of`] for an answer already decided.
fn head_only(o: HttpOutcome) -> HttpOutcome {
    match o {
        HttpOutcome::Respond { consumed, mut bytes, close } => {
            if let Some(end) = bytes.windows(4).position(|w| w == b"\r\n\r\n") {
                bytes.truncate(end + 4);
            }
            HttpOutcome::Respond { consumed, bytes, close }
        }
        other => other,
    }
}

/// The path segment of a login form's action (`POST /auth`), never a URL group name.
const FORM_ACTION_SEGMENT: &str = "auth";

/// The first path segment of a URL or request target (`https://gw/RA` -> `RA`).
fn url_group(url: Option<&str>) -> Option<String> {
    let u = url?;
    let path = match u.find("://") {
        Some(i) => {
            let rest = &u[i + 3..];
            &rest[rest.find('/').unwrap_or(rest.len())..]
        }
        None => u,
    };
    let seg = path.trim_start_matches('/').split(['/', '?']).next()?;
    (!seg.is_empty()).then(|| seg.to_string())
}

// ---------------------------------------------------------------------------------------
// Reconfiguration (`holdfast reload`, SIGHUP): docs/reload.md "Remote access".

impl Server {
    /// The live sessions whose address `new` would take out of their tunnel group's pools
    /// (or give another netmask). Empty: [`Server::reconfigure`] will accept `new`.
    pub fn reconfigure_conflicts(&self, new: &Config) -> Vec<crate::config::LeaseConflict> {
        let mut v: Vec<crate::config::LeaseConflict> = Vec::new();
        for s in self.sessions.values() {
            let Some(a) = s.address else { continue };
            let old_pool = self.config.pool_holding(&s.tunnel_group, a).map(|(n, _)| n.to_string());
            let why = if !new.tunnel_groups.iter().any(|g| g.name == s.tunnel_group) {
                format!("tunnel-group {} is removed", s.tunnel_group)
            } else {
                match new.pool_holding(&s.tunnel_group, a) {
                    None => format!("no address-pool of tunnel-group {} contains it any more", s.tunnel_group),
                    Some((name, p)) if p.mask != s.netmask => {
                        format!("pool {name} would give it mask {} instead of {}", p.mask, s.netmask)
                    }
                    Some(_) => continue,
                }
            };
            v.push(crate::config::LeaseConflict {
                user: s.user.clone(),
                address: a,
                tunnel_group: s.tunnel_group.clone(),
                pool: old_pool,
                why,
            });
        }
        v.sort_by_key(|c| u32::from(c.address));
        v
    }

    /// Applies a new remote-access configuration to the running engine, all or nothing:
    /// refused (nothing changes) when a live session's leased address would fall outside the
    /// pools of its tunnel group ([`Server::reconfigure_conflicts`]). Otherwise:
    ///
    /// - users, tunnel groups, group policies, pools and the group list are replaced: the
    ///   next login, group choice and address lease use them;
    /// - a session that has not sent its first CONNECT yet takes its group's new policy (it
    ///   has negotiated nothing);
    /// - a session that has connected keeps what its client was told at CONNECT (split
    ///   networks, DNS, banner, MTU, DTLS, timeouts), also across reconnects with its cookie:
    ///   the client keeps its adapter and routes over a reconnect, so new values would only
    ///   make our view differ from its. Two settings that are purely the gateway's own apply
    ///   at once: `anyconnect dpd-interval gateway` and `anyconnect ssl df-bit-ignore`;
    /// - sessions of removed users (or users whose password changed) are kept, as the ASA
    ///   keeps them until logoff (`vpn-sessiondb logoff name USER` ends them); password
    ///   checks in flight for those users are dropped, so the old password cannot complete
    ///   a login after the reload.
    ///
    /// Settings that are not in the configuration file (limits, fallback timing, grace,
    /// verifier, link MTU) and those that need a restart (`dtls port`, `sysopt connection
    /// tcpmss`) are kept from the running configuration.
    pub fn reconfigure(&mut self, now: Instant, new: Config) -> Result<crate::config::Changes, Vec<crate::config::LeaseConflict>> {
        let conflicts = self.reconfigure_conflicts(&new);
        if !conflicts.is_empty() {
            return Err(conflicts);
        }
        let changes = self.config.changes(&new);
        // Password checks started under the old user database must not complete a login
        // for a user that is gone or whose password changed.
        let stale: Vec<&str> = changes
            .users_removed
            .iter()
            .chain(&changes.users_password_changed)
            .map(String::as_str)
            .collect();
        self.checks.retain(|_, c| !stale.contains(&c.user.as_str()));
        let Config { users, tunnel_groups, group_policies, pools, group_list, server_cert_sha1, .. } = new;
        // The reload read the certificate again; new logins must name the one now served.
        self.config.server_cert_sha1 = server_cert_sha1;
        self.config.users = users;
        self.config.tunnel_groups = tunnel_groups;
        self.config.group_policies = group_policies;
        self.config.pools = pools;
        self.config.group_list = group_list;

        let ids: Vec<SessionId> = self.sessions.keys().copied().collect();
        for id in ids {
            let fresh = self.sessions.get(&id).and_then(|s| {
                let g = self.config.tunnel_groups.iter().find(|g| g.name == s.tunnel_group)?;
                Some((g.default_group_policy.clone(), self.config.policy_of(g)))
            });
            let Some(s) = self.sessions.get_mut(&id) else { continue };
            match fresh {
                Some((name, p)) if !s.ever_connected => {
                    s.group_policy = name;
                    s.policy = p;
                }
                // Only from the policy the session logged in with (its group may now
                // point at another one: that applies from the next login).
                Some((name, p)) if name == s.group_policy => {
                    s.policy.dpd_gateway = p.dpd_gateway;
                    s.policy.df_bit_ignore = p.df_bit_ignore;
                }
                _ => {}
            }
            // A shorter DPD interval must wake the session earlier than its current timer.
            self.reschedule(id);
        }
        let _ = now;
        Ok(changes)
    }
}
