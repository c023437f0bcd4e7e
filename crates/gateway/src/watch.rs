//! Path watch: notices, per tunnel, that traffic goes out and nothing comes back, and drives
//! the fast resumption of preserved flows (issue 3, tcp-resume.md).
//!
//! Sans-IO like the engines: the control task samples each tunnel every `TICK` (SA packet
//! counters, whether it has an SA, when the IKE engine last heard the peer, whether the
//! connection table holds segments for it) and carries out the returned actions:
//!
//! * `CheckLiveness` -> `ike::Command::CheckLiveness`: an RFC 7296 §2.4 liveness check sent
//!   after `SILENCE` without inbound ESP while we are sending, instead of after the 10 s idle
//!   threshold; repeated every tick while unanswered (the engine re-sends the same request at
//!   most every `ike::KNOCK_INTERVAL`, without using up retransmission tries).
//! * `Suspend` -> `flow::Engine::tunnel_suspend`: unanswered for `SUSPEND_AFTER`, the path is
//!   presumed broken; established TCP of the tunnel is held and answered with ICMP so the
//!   senders' retransmission timers stop doubling (only for tunnels that came up with
//!   preserve-vpn-flows; the flow engine refuses otherwise).
//! * `Resume` -> `flow::Engine::tunnel_resume`: the peer answered (an IKE message after the
//!   check, or inbound ESP): replay the held segments at once.
//! * `Knock` -> `ike::Command::Initiate`: the tunnel has no SA and the connection table holds
//!   segments waiting for it, so the negotiation is re-sent now rather than at its backed-off
//!   retransmission time: a path that comes back is used within a knock interval.
//!
//! The watch never tears anything down: a tunnel drops only when its SAs go (DPD, delete),
//! which the daemon handles with its grace period.

use std::collections::HashMap;
use std::time::{Duration, Instant};

/// How often the control task samples the tunnels.
pub const TICK: Duration = Duration::from_millis(250);
/// No inbound ESP for this long while we sent something: ask whether the peer is alive.
pub const SILENCE: Duration = Duration::from_millis(1500);
/// The liveness check unanswered for this long: suspend the tunnel's preserved flows.
pub const SUSPEND_AFTER: Duration = Duration::from_millis(1000);

/// One tunnel's state as the control task sees it at a tick.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Sample {
    /// Packets sent on the tunnel's outbound SAs (monotonic total; any base).
    pub out_packets: u64,
    /// Packets received on the tunnel's inbound SAs (monotonic total; any base).
    pub in_packets: u64,
    /// The tunnel has an outbound SA installed.
    pub has_sa: bool,
    /// `ike::Endpoint::last_heard` for the tunnel.
    pub last_heard: Option<Instant>,
    /// The connection table holds segments waiting for this tunnel.
    pub held: bool,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Action {
    CheckLiveness,
    Suspend,
    Resume,
    Knock,
}

#[derive(Debug, Clone, Copy)]
struct State {
    out_packets: u64,
    in_packets: u64,
    out_at: Instant,
    in_at: Instant,
    asked_at: Option<Instant>,
    suspended: bool,
    /// Checks answered by the peer while no ESP came back (one-way traffic, or a path that
    /// carries IKE but not ESP): each one doubles the silence needed before the next check,
    /// up to `MAX_SILENCE`, so such a tunnel is not probed twice a second forever.
    quiet_answers: u32,
}

/// The longest silence the watch waits for before a check (the regular DPD idle threshold).
pub const MAX_SILENCE: Duration = Duration::from_secs(10);

#[derive(Debug, Default)]
pub struct PathWatch {
    tunnels: HashMap<String, State>,
}

impl PathWatch {
    pub fn new() -> Self {
        Self::default()
    }

    /// Whether the watch currently has the tunnel suspended.
    pub fn is_suspended(&self, tunnel: &str) -> bool {
        self.tunnels.get(tunnel).is_some_and(|s| s.suspended)
    }

    /// The tunnel went down (its flows are handled by `tunnel_down`) or was reconfigured:
    /// forget the check in progress.
    pub fn reset(&mut self, tunnel: &str) {
        if let Some(s) = self.tunnels.get_mut(tunnel) {
            s.asked_at = None;
            s.suspended = false;
        }
    }

    /// Feeds one sample; returns what to do now (at most one check, one suspend/resume and one
    /// knock per tick).
    pub fn tick(&mut self, now: Instant, tunnel: &str, s: Sample) -> Vec<Action> {
        let mut actions = Vec::new();
        let st = self.tunnels.entry(tunnel.to_string()).or_insert(State {
            out_packets: s.out_packets,
            in_packets: s.in_packets,
            out_at: now,
            in_at: now,
            asked_at: None,
            suspended: false,
            quiet_answers: 0,
        });
        // Totals only grow, except when the daemon forgets a retired SA: a drop is not traffic.
        if s.out_packets > st.out_packets {
            st.out_at = now;
        }
        st.out_packets = s.out_packets;
        if s.in_packets > st.in_packets {
            st.in_at = now;
            st.quiet_answers = 0;
        }
        st.in_packets = s.in_packets;
        if !s.has_sa {
            // No SA: the flow engine sees the tunnel as down (or about to be, after the grace
            // period); a suspension has no meaning any more. Knock while segments wait.
            st.asked_at = None;
            st.suspended = false;
            st.quiet_answers = 0;
            if s.held {
                actions.push(Action::Knock);
            }
            return actions;
        }
        match st.asked_at {
            Some(asked) => {
                let esp_back = st.in_at > asked;
                let heard = s.last_heard.is_some_and(|h| h > asked) || esp_back;
                if heard {
                    st.asked_at = None;
                    if !esp_back {
                        // Alive, but still nothing on ESP: back off before asking again.
                        st.in_at = now;
                        st.quiet_answers = st.quiet_answers.saturating_add(1);
                    }
                    if st.suspended {
                        st.suspended = false;
                        actions.push(Action::Resume);
                    }
                } else {
                    actions.push(Action::CheckLiveness);
                    if !st.suspended && now.saturating_duration_since(asked) >= SUSPEND_AFTER {
                        st.suspended = true;
                        actions.push(Action::Suspend);
                    }
                }
            }
            None => {
                let wait = SILENCE.saturating_mul(1u32 << st.quiet_answers.min(4)).min(MAX_SILENCE);
                let silent = now.saturating_duration_since(st.in_at) >= wait;
                let sending = st.out_at > st.in_at && now.saturating_duration_since(st.out_at) < SILENCE;
                if silent && sending {
                    st.asked_at = Some(now);
                    actions.push(Action::CheckLiveness);
                }
            }
        }
        actions
    }

    /// Drops state of tunnels no longer configured.
    pub fn retain(&mut self, keep: impl Fn(&str) -> bool) {
        self.tunnels.retain(|k, _| keep(k));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    struct Rig {
        w: PathWatch,
        t0: Instant,
        out: u64,
        inb: u64,
        heard: Option<Instant>,
    }

    impl Rig {
        fn new() -> Self {
            #[allow(clippy::disallowed_methods)] // a base for the virtual clock
            let t0 = Instant::now();
            Self { w: PathWatch::new(), t0, out: 0, inb: 0, heard: Some(t0) }
        }
        fn at(&self, ms: u64) -> Instant {
            self.t0 + Duration::from_millis(ms)
        }
        fn tick(&mut self, ms: u64, has_sa: bool, held: bool) -> Vec<Action> {
            let s = Sample { out_packets: self.out, in_packets: self.inb, has_sa, last_heard: self.heard, held };
            let now = self.at(ms);
            self.w.tick(now, "T", s)
        }
    }

    #[test]
    fn two_way_traffic_never_triggers_a_check() {
        let mut r = Rig::new();
        for ms in (0..20_000).step_by(250) {
            r.out += 10;
            r.inb += 5;
            assert!(r.tick(ms, true, false).is_empty(), "at {ms} ms");
        }
    }

    #[test]
    fn an_idle_tunnel_is_left_to_the_regular_dpd() {
        let mut r = Rig::new();
        for ms in (0..30_000).step_by(250) {
            assert!(r.tick(ms, true, false).is_empty(), "at {ms} ms");
        }
    }

    #[test]
    fn silent_path_is_checked_suspended_and_resumed_when_the_peer_answers() {
        let mut r = Rig::new();
        let mut ms = 0;
        while ms < 2000 {
            r.out += 10;
            r.inb += 5;
            assert!(r.tick(ms, true, false).is_empty());
            ms += 250;
        }
        // The path goes silent at 2000 ms: we keep sending (retransmissions), nothing comes back.
        let mut seen = Vec::new();
        while ms < 6000 {
            r.out += 1;
            for a in r.tick(ms, true, false) {
                seen.push((ms, a));
            }
            ms += 250;
        }
        let first_check = seen.iter().find(|(_, a)| *a == Action::CheckLiveness).expect("checked").0;
        assert!((3250..=3500).contains(&first_check), "check after SILENCE, at {first_check}");
        let suspend = seen.iter().find(|(_, a)| *a == Action::Suspend).expect("suspended").0;
        assert_eq!(suspend, first_check + 1000, "suspend SUSPEND_AFTER later");
        assert_eq!(seen.iter().filter(|(_, a)| *a == Action::Suspend).count(), 1);
        assert!(seen.iter().filter(|(t, a)| *a == Action::CheckLiveness && *t > first_check).count() >= 8, "knocked every tick");
        assert!(r.w.is_suspended("T"));
        // The peer answers the check.
        r.heard = Some(r.at(ms - 10));
        assert_eq!(r.tick(ms, true, false), vec![Action::Resume]);
        assert!(!r.w.is_suspended("T"));
        // The replayed segment is answered: ESP flows both ways again.
        r.out += 1;
        r.inb += 1;
        assert!(r.tick(ms + 250, true, false).is_empty());
    }

    #[test]
    fn inbound_esp_after_the_check_also_counts_as_an_answer() {
        let mut r = Rig::new();
        r.out = 1;
        r.tick(0, true, false);
        r.out = 2;
        assert_eq!(r.tick(1500, true, false), vec![Action::CheckLiveness]);
        r.out = 3;
        assert_eq!(r.tick(2500, true, false), vec![Action::CheckLiveness, Action::Suspend]);
        r.inb = 1;
        assert_eq!(r.tick(2750, true, false), vec![Action::Resume]);
    }

    #[test]
    fn one_way_traffic_answered_by_ike_backs_off_instead_of_probing_twice_a_second() {
        let mut r = Rig::new();
        let mut checks = Vec::new();
        for ms in (0..60_000).step_by(250) {
            r.out += 1;
            let a = r.tick(ms, true, false);
            if a.contains(&Action::CheckLiveness) {
                checks.push(ms);
                // The peer answers every check at once; no ESP ever comes back.
                r.heard = Some(r.at(ms + 1));
            }
            assert!(!a.contains(&Action::Suspend), "answered checks never suspend (at {ms} ms)");
        }
        assert!(checks.len() <= 12, "{} checks in 60 s: {checks:?}", checks.len());
        let gaps: Vec<u64> = checks.windows(2).map(|w| w[1] - w[0]).collect();
        assert!(gaps.last().is_some_and(|&g| g >= 10_000), "backed off to the DPD threshold: {gaps:?}");
        // ESP coming back resets the backoff.
        r.inb += 1;
        r.tick(60_000, true, false);
        r.out += 1;
        let mut first = None;
        for ms in (60_250..70_000).step_by(250) {
            r.out += 1;
            if r.tick(ms, true, false).contains(&Action::CheckLiveness) {
                first = Some(ms);
                break;
            }
        }
        assert_eq!(first, Some(61_500), "back to SILENCE after real inbound traffic");
    }

    #[test]
    fn a_shrinking_total_is_not_inbound_traffic() {
        let mut r = Rig::new();
        r.out = 1;
        r.inb = 100;
        r.tick(0, true, false);
        r.out = 2;
        assert_eq!(r.tick(1500, true, false), vec![Action::CheckLiveness]);
        r.out = 3;
        assert!(r.tick(2500, true, false).contains(&Action::Suspend));
        // A retired SA's counters leave the sum: not an answer.
        r.inb = 40;
        assert_eq!(r.tick(2750, true, false), vec![Action::CheckLiveness]);
        assert!(r.w.is_suspended("T"));
    }

    #[test]
    fn a_tunnel_without_sa_knocks_only_while_segments_wait() {
        let mut r = Rig::new();
        assert!(r.tick(0, false, false).is_empty());
        assert_eq!(r.tick(250, false, true), vec![Action::Knock]);
        assert_eq!(r.tick(500, false, true), vec![Action::Knock]);
        assert!(r.tick(750, false, false).is_empty());
    }

    #[test]
    fn losing_the_sa_ends_a_suspension_without_a_resume() {
        let mut r = Rig::new();
        r.out = 1;
        r.tick(0, true, false);
        r.out = 2;
        r.tick(1500, true, false);
        assert!(r.tick(2500, true, false).contains(&Action::Suspend));
        assert!(r.tick(2750, false, true).contains(&Action::Knock));
        assert!(!r.w.is_suspended("T"));
        // Back with a new SA: a fresh start, no stale resume.
        r.inb = 7;
        assert!(r.tick(3000, true, false).is_empty());
    }
}
