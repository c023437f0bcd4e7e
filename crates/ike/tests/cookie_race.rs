//! Regression test for a CI failure of the `hs_on_wan_block_30s` lab test:
//! a COOKIE response and a real IKE_SA_INIT response to two copies of the SAME IKE_SA_INIT
//! request reach the initiator, the COOKIE first.
//!
//! strongSwan 5.9.8 answers a burst of identical IKE_SA_INIT copies (here: the copies holdfast's
//! knocks queued during the 30 s wan block, flushed at once when the block lifts) like this:
//! the first copies are admitted and one of them creates a half-open IKE SA (<2>, response R2);
//! once the per-IP count of half-open + unprocessed IKE_SA_INITs reaches `cookie_threshold_ip`
//! (default 3) the later copies get a stateless COOKIE notify, which leaves strongSwan's receiver
//! thread at once, before the worker has computed R2. holdfast then:
//!   1. on the COOKIE, re-sends IKE_SA_INIT with a NEW KE (endpoint.rs `send_init`,
//!      `DhPrivate::generate` on every call) -> strongSwan makes <3> from it;
//!   2. accepts R2 (matched by SPIi, message ID 0, state InitSent) as the answer to the NEW
//!      request: shared secret from the new DH private and <2>'s KEr, `msg1` = the cookie'd
//!      request -> keys that <2> does not have;
//!   3. sends IKE_AUTH with SPIr of <2>: "verifying encrypted payload integrity failed", dropped
//!      silently, retransmitted (and knocked) for 1+2+4+8+16+32 s = 63 s > the test's 60 s.
//!
//! Here the peer is holdfast itself: endpoint B plays strongSwan's <2> (it answers the plain
//! copy) and endpoint C, the same peer configuration with `cookie_challenge_percent = 0`
//! (cookies always demanded), plays strongSwan's stateless cookie path for another copy.
//!
//! Before the fix (RFC 7296 §2.6: the cookie'd retry resends the same KE and nonce) both
//! tests failed:
//!   - `cookie_retry_changes_only_the_cookie`: the retry's KE payload differed from the first
//!     request's;
//!   - `cookie_racing_a_real_response_still_comes_up`: B could not verify our IKE_AUTH
//!     (handle_datagram returned Err, nothing was answered), the CI symptom.
//!
//! Run: cargo test -p holdfast-ike --test cookie_race

use ike::{Command, Endpoint, Event, Path, Transmit};
use policy::*;
use std::time::{Duration, Instant};
use wire::ike::{ExchangeType, Header, Message, NotifyType, Payload};

mod common;
use common::*;

fn drain(ep: &mut Endpoint) -> Vec<Transmit> {
    let mut v = Vec::new();
    while let Some(t) = ep.poll_transmit() {
        v.push(t);
    }
    v
}

fn events(ep: &mut Endpoint) -> Vec<Event> {
    let mut v = Vec::new();
    while let Some(e) = ep.poll_event() {
        v.push(e);
    }
    v
}

/// Delivers `t` (sent by the other side) to `ep`, swapping the path's ends.
fn deliver(ep: &mut Endpoint, now: Instant, t: &Transmit) -> Result<(), ike::Drop> {
    ep.handle_datagram(now, Path { local: t.path.remote, remote: t.path.local }, &t.data)
}

fn ke_and_nonce(data: &[u8]) -> (Vec<u8>, Vec<u8>) {
    let m = Message::parse(data).expect("IKE_SA_INIT parses");
    let ke = m.payloads.iter().find_map(|p| match p {
        Payload::Ke { data, .. } => Some(data.to_vec()),
        _ => None,
    });
    let n = m.payloads.iter().find_map(|p| match p {
        Payload::Nonce(n) => Some(n.to_vec()),
        _ => None,
    });
    (ke.expect("KE payload"), n.expect("Nonce payload"))
}

fn is_cookie_response(data: &[u8]) -> bool {
    Message::parse(data).is_ok_and(|m| m.header.is_response() && m.notifies().any(|n| n.ty == NotifyType::Cookie))
}

struct Lab {
    now: Instant,
    a: Endpoint,
    /// The peer's state-creating path (strongSwan's half-open <2>).
    b: Endpoint,
    /// The peer's stateless cookie path (same configuration, cookies always demanded).
    c: Endpoint,
}

impl Lab {
    fn new() -> Self {
        let g = Ikev2Globals { retransmit_base: Duration::from_millis(1000), retransmit_tries: 5, ..Default::default() };
        let cookie_always = Ikev2Globals { cookie_challenge_percent: 0, ..g.clone() };
        #[allow(clippy::disallowed_methods)] // the virtual clock needs some starting Instant
        let now = Instant::now();
        Lab {
            now,
            a: Endpoint::new(vec![tunnel(A, B, "10.1.0.0", "10.2.0.0", &gcm_x25519())], g.clone(), Box::new(crypto::SeededRandom::new(11))),
            b: Endpoint::new(vec![tunnel(B, A, "10.2.0.0", "10.1.0.0", &gcm_x25519())], g.clone(), Box::new(crypto::SeededRandom::new(12))),
            c: Endpoint::new(vec![tunnel(B, A, "10.2.0.0", "10.1.0.0", &gcm_x25519())], cookie_always, Box::new(crypto::SeededRandom::new(13))),
        }
    }

    /// A initiates; returns its first IKE_SA_INIT request.
    fn first_init(&mut self) -> Transmit {
        self.a.handle_command(self.now, Command::Initiate { tunnel: format!("MAP:{B}") });
        let mut out = drain(&mut self.a);
        assert_eq!(out.len(), 1, "one IKE_SA_INIT");
        out.remove(0)
    }

    /// Two copies of A's request reach the peer: one creates its half-open SA (B, response R2),
    /// the other is answered statelessly with a COOKIE (C). Returns (R2, COOKIE response).
    fn peer_answers_two_copies(&mut self, init: &Transmit) -> (Transmit, Transmit) {
        deliver(&mut self.b, self.now, init).expect("B takes the first copy");
        let mut r2 = drain(&mut self.b);
        assert_eq!(r2.len(), 1, "B answers IKE_SA_INIT");
        deliver(&mut self.c, self.now, init).expect("C answers the second copy");
        let mut ck = drain(&mut self.c);
        assert_eq!(ck.len(), 1, "C answers with a cookie");
        assert!(is_cookie_response(&ck[0].data), "C's answer is a COOKIE notify");
        (r2.remove(0), ck.remove(0))
    }
}

/// RFC 7296 §2.6: after a COOKIE the initiator MUST retry "with a Notify payload of type COOKIE
/// containing the responder-supplied cookie data as the first payload and all other payloads
/// unchanged". holdfast regenerates the KE (send_init -> DhPrivate::generate).
#[test]
fn cookie_retry_changes_only_the_cookie() {
    let mut lab = Lab::new();
    let init = lab.first_init();
    let (_r2, cookie) = lab.peer_answers_two_copies(&init);
    let _ = deliver(&mut lab.a, lab.now, &cookie);
    // The retry may go out now or at the next retransmission; look until it does.
    let mut retry = drain(&mut lab.a);
    for _ in 0..10 {
        if !retry.is_empty() {
            break;
        }
        lab.now += Duration::from_millis(500);
        lab.a.handle_timeout(lab.now);
        retry = drain(&mut lab.a);
    }
    let retry = retry.into_iter().find(|t| Message::parse(&t.data).is_ok_and(|m| m.notifies().any(|n| n.ty == NotifyType::Cookie)));
    let retry = retry.expect("A retries IKE_SA_INIT with the cookie");
    let h0 = Header::parse(&init.data).unwrap();
    let h1 = Header::parse(&retry.data).unwrap();
    assert_eq!((h1.spi_i, h1.spi_r, h1.message_id, h1.exchange), (h0.spi_i, 0, 0, ExchangeType::IkeSaInit));
    let (ke0, n0) = ke_and_nonce(&init.data);
    let (ke1, n1) = ke_and_nonce(&retry.data);
    assert_eq!(n1, n0, "the cookie retry keeps Ni");
    assert_eq!(ke1, ke0, "the cookie retry keeps KEi (RFC 7296 §2.6: all other payloads unchanged)");
}

/// The ci11 sequence: the COOKIE for one copy arrives before the real response R2 to another
/// copy of the same request. The tunnel must still come up with the SA that sent R2 (B); in
/// ci11 holdfast's IKE_AUTH failed B's integrity check and nothing came back for 63 s.
#[test]
fn cookie_racing_a_real_response_still_comes_up() {
    let mut lab = Lab::new();
    let init = lab.first_init();
    let (r2, cookie) = lab.peer_answers_two_copies(&init);
    let _ = deliver(&mut lab.a, lab.now, &cookie); // COOKIE first (stateless: it leaves first)
    let mut a_out = drain(&mut lab.a); // the cookie retry, if sent at once (it would create <3> at strongSwan)
    lab.now += Duration::from_millis(1);
    deliver(&mut lab.a, lab.now, &r2).expect("A takes R2: same SPIi, message ID 0, IKE_SA_INIT response");
    a_out.extend(drain(&mut lab.a));
    let auth: Vec<Transmit> = a_out
        .into_iter()
        .filter(|t| Header::parse(&t.data).is_ok_and(|h| h.exchange == ExchangeType::IkeAuth))
        .collect();
    assert!(!auth.is_empty(), "A sends IKE_AUTH after R2");
    let r2h = Header::parse(&r2.data).unwrap();
    assert_eq!(Header::parse(&auth[0].data).unwrap().spi_r, r2h.spi_r, "IKE_AUTH goes to the SA that sent R2");

    // B (strongSwan's <2>) must be able to verify and answer it.
    for t in &auth {
        let r = deliver(&mut lab.b, lab.now, t);
        assert!(r.is_ok(), "B rejects A's IKE_AUTH ({r:?}): A derived keys B does not have (ci11: 'verifying encrypted payload integrity failed')");
    }
    let b_out = drain(&mut lab.b);
    assert!(!b_out.is_empty(), "B answers IKE_AUTH");
    for t in &b_out {
        let _ = deliver(&mut lab.a, lab.now, t);
    }
    let ev = events(&mut lab.a);
    assert!(ev.iter().any(|e| matches!(e, Event::ChildSaUp(_))), "A's tunnel comes up with B; A's events: {ev:?}");
    assert!(events(&mut lab.b).iter().any(|e| matches!(e, Event::ChildSaUp(_))), "B's side is up too");
}

/// A tunnel that offers these DH groups, otherwise the shared lab suite.
fn tunnel_groups(local: &str, peer: &str, lnet: &str, rnet: &str, groups: Vec<DhGroup>) -> TunnelPolicy {
    tunnel(local, peer, lnet, rnet, &Algs { groups, ..gcm_x25519() })
}

fn globals() -> Ikev2Globals {
    Ikev2Globals { retransmit_base: Duration::from_millis(1000), retransmit_tries: 5, ..Default::default() }
}

fn sends_ike_auth(out: &[Transmit]) -> bool {
    out.iter().any(|t| Header::parse(&t.data).is_ok_and(|h| h.exchange == ExchangeType::IkeAuth))
}

/// Two copies of the request both get INVALID_KE_PAYLOAD (a retransmission crossed the first
/// answer). The second copy must not kill the retry the first one started: the retry already
/// carries the group asked for. (Before, it ended the SA as "a group we do not allow".)
#[test]
fn duplicate_invalid_ke_keeps_the_retry() {
    #[allow(clippy::disallowed_methods)] // the virtual clock needs some starting Instant
    let mut now = Instant::now();
    let mut a = Endpoint::new(vec![tunnel_groups(A, B, "10.1.0.0", "10.2.0.0", vec![DhGroup::Curve25519, DhGroup::Ecp256])], globals(), Box::new(crypto::SeededRandom::new(11)));
    let mut b = Endpoint::new(vec![tunnel_groups(B, A, "10.2.0.0", "10.1.0.0", vec![DhGroup::Ecp256])], globals(), Box::new(crypto::SeededRandom::new(12)));
    a.handle_command(now, Command::Initiate { tunnel: format!("MAP:{B}") });
    let p = drain(&mut a);
    assert_eq!(p.len(), 1);
    deliver(&mut b, now, &p[0]).unwrap();
    deliver(&mut b, now, &p[0]).unwrap();
    let invalid_ke = drain(&mut b);
    assert_eq!(invalid_ke.len(), 2, "B answers both copies with INVALID_KE_PAYLOAD");
    now += Duration::from_millis(10);
    deliver(&mut a, now, &invalid_ke[0]).expect("the first INVALID_KE_PAYLOAD switches the group");
    let retry = drain(&mut a);
    assert_eq!(retry.len(), 1, "A retries with group 19");
    assert!(deliver(&mut a, now, &invalid_ke[1]).is_err(), "the duplicate is dropped");
    assert!(!events(&mut a).iter().any(|e| matches!(e, Event::IkeNegotiationFailed { .. } | Event::IkeSaDown { .. })), "the duplicate does not end the negotiation");
    deliver(&mut b, now, &retry[0]).unwrap();
    let answer = drain(&mut b);
    for t in &answer {
        deliver(&mut a, now, t).expect("A takes the group-19 answer");
    }
    assert!(sends_ike_auth(&drain(&mut a)), "A goes on to IKE_AUTH");
}

/// Four copies of the request answered with the same COOKIE are one cookie, not four restarts:
/// the INVALID_KE_PAYLOAD that follows for the cookie'd request still gets its group switch.
/// (Before, the duplicates spent the restart budget and A ended the SA.)
#[test]
fn duplicate_cookies_are_one_restart() {
    let cookie_always = Ikev2Globals { cookie_challenge_percent: 0, ..globals() };
    #[allow(clippy::disallowed_methods)] // the virtual clock needs some starting Instant
    let mut now = Instant::now();
    let mut a = Endpoint::new(vec![tunnel_groups(A, B, "10.1.0.0", "10.2.0.0", vec![DhGroup::Curve25519, DhGroup::Ecp256])], globals(), Box::new(crypto::SeededRandom::new(11)));
    let mut b = Endpoint::new(vec![tunnel_groups(B, A, "10.2.0.0", "10.1.0.0", vec![DhGroup::Ecp256])], cookie_always, Box::new(crypto::SeededRandom::new(12)));
    a.handle_command(now, Command::Initiate { tunnel: format!("MAP:{B}") });
    let p = drain(&mut a);
    for _ in 0..4 {
        deliver(&mut b, now, &p[0]).unwrap();
    }
    let cookies = drain(&mut b);
    assert_eq!(cookies.len(), 4);
    deliver(&mut a, now, &cookies[0]).expect("the first COOKIE is taken");
    for c in &cookies[1..] {
        assert!(deliver(&mut a, now, c).is_err(), "a repeated COOKIE changes nothing");
    }
    now += Duration::from_millis(600);
    a.handle_timeout(now);
    let q = drain(&mut a);
    assert_eq!(q.len(), 1, "one cookie'd retry");
    deliver(&mut b, now, &q[0]).unwrap();
    for t in &drain(&mut b) {
        deliver(&mut a, now, t).expect("INVALID_KE_PAYLOAD for the cookie'd request switches the group");
    }
    assert!(!events(&mut a).iter().any(|e| matches!(e, Event::IkeNegotiationFailed { .. } | Event::IkeSaDown { .. })));
    let retry = drain(&mut a);
    assert_eq!(retry.len(), 1, "A retries with group 19, cookie kept");
    let m = Message::parse(&retry[0].data).unwrap();
    assert!(m.notifies().any(|n| n.ty == NotifyType::Cookie), "RFC 7296 §2.6: the cookie stays first");
}

/// The real answer to the plain request arrives after the cookie'd copy left. Which copy the
/// responder answered is unknowable; AUTH signs the one that left last, the responder checks the
/// other and refuses. The failure must say that it may be this race, not only "refused", and the
/// tunnel is initiated again.
#[test]
fn late_real_response_after_the_cookie_retry_is_reported_as_such() {
    let mut lab = Lab::new();
    let init = lab.first_init();
    let (r2, cookie) = lab.peer_answers_two_copies(&init);
    let _ = deliver(&mut lab.a, lab.now, &cookie);
    assert!(drain(&mut lab.a).is_empty(), "the cookie'd retry waits KNOCK_INTERVAL");
    lab.now += Duration::from_millis(600);
    lab.a.handle_timeout(lab.now);
    assert_eq!(drain(&mut lab.a).len(), 1, "the cookie'd retry left");
    lab.now += Duration::from_millis(50);
    deliver(&mut lab.a, lab.now, &r2).expect("A takes R2");
    let auth = drain(&mut lab.a);
    assert!(sends_ike_auth(&auth));
    for t in &auth {
        let _ = deliver(&mut lab.b, lab.now, t);
    }
    for t in &drain(&mut lab.b) {
        let _ = deliver(&mut lab.a, lab.now, t);
    }
    let failed: Vec<String> = events(&mut lab.a)
        .into_iter()
        .filter_map(|e| match e {
            Event::IkeNegotiationFailed { reason, .. } => Some(reason),
            _ => None,
        })
        .collect();
    assert_eq!(failed.len(), 1, "B refuses AUTH computed over the other copy: {failed:?}");
    assert!(failed[0].contains("AuthenticationFailed") && failed[0].contains("COOKIE"), "{}", failed[0]);
    lab.now += Duration::from_secs(5);
    lab.a.handle_timeout(lab.now);
    let again = drain(&mut lab.a);
    assert!(again.iter().any(|t| Header::parse(&t.data).is_ok_and(|h| h.exchange == ExchangeType::IkeSaInit)), "A initiates again");
}
