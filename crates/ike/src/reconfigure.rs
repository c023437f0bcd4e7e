//! A new configuration for a running engine (`holdfast reload`, SIGHUP): SAs of tunnels whose
//! policy did not change stay exactly as they are (same SPIs, keys, message IDs); tunnels whose
//! policy changed lose their SAs (with an INFORMATIONAL Delete, RFC 7296 §1.4.1) so that the
//! caller can negotiate them again under the new policy; removed tunnels lose theirs for good.
//!
//! Tunnel indices are held all over the engine (IKE SAs, CHILD_SAs, queued requests), so the
//! engine keeps a "retired" copy of a replaced or removed tunnel at the end of its list for as
//! long as an SA being deleted still points at it. A retired entry can never be chosen again:
//! it answers no peer (unspecified peer address), matches no selector (none) and initiates
//! nothing (answer-only).

use super::{clamp_globals, clamp_tunnel, ChildState, Endpoint, Req, State, TunnelState, Pending, REINIT_BACKOFF_MIN};
use crate::{DownReason, Event};
use policy::{ConnectionType, Ikev2Globals, TunnelPolicy};
use std::collections::HashSet;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::time::Instant;

/// What [`Endpoint::reconfigure`] did, by tunnel name.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Reconfigured {
    /// Policy unchanged: IKE SA, CHILD_SAs (same SPIs) and timers untouched.
    pub kept: Vec<String>,
    /// Policy changed, or the tunnel shared an IKE SA that had to go: its SAs were deleted.
    /// The caller installs certificate material and sends `Command::Initiate` for the ones
    /// that are not answer-only.
    pub changed: Vec<String>,
    /// New tunnels (not initiated by the engine; see `changed`).
    pub added: Vec<String>,
    /// Gone from the configuration: their SAs were deleted.
    pub removed: Vec<String>,
}

impl Reconfigured {
    /// Tunnels the caller should bring up again (changed and added).
    pub fn to_initiate(&self) -> impl Iterator<Item = &String> {
        self.changed.iter().chain(self.added.iter())
    }
}

/// The parts of a tunnel's policy its IKE SA was negotiated with: another tunnel to the same
/// peer with the same values can carry the IKE SA on. (DPD is local and not part of it.)
fn same_ike(a: &TunnelPolicy, b: &TunnelPolicy) -> bool {
    a.local_addr == b.local_addr
        && a.peer_addr == b.peer_addr
        && a.outside_ifname == b.outside_ifname
        && a.ike_policies == b.ike_policies
        && a.local_psk == b.local_psk
        && a.remote_psk == b.remote_psk
        && a.nat_t_disable == b.nat_t_disable
        && a.force_udp_encap == b.force_udp_encap
}

/// Equal but for settings that are purely local and not negotiated with the peer: CHILD_SA
/// lifetimes (RFC 7296 §2.8: each end rekeys on its own schedule), DPD (§2.4: our liveness
/// checks) and whether we initiate. Running SAs can stay; the new values apply from the next
/// rekey or check.
fn same_but_local(a: &TunnelPolicy, b: &TunnelPolicy) -> bool {
    let mut b = b.clone();
    b.child_lifetime = a.child_lifetime;
    b.child_lifetime_kilobytes = a.child_lifetime_kilobytes;
    b.dpd = a.dpd;
    b.connection_type = a.connection_type;
    *a == b
}

fn retired_copy(t: &TunnelPolicy) -> TunnelPolicy {
    let mut t = t.clone();
    t.peer_addr = match t.peer_addr {
        IpAddr::V4(_) => IpAddr::V4(Ipv4Addr::UNSPECIFIED),
        IpAddr::V6(_) => IpAddr::V6(Ipv6Addr::UNSPECIFIED),
    };
    t.local_ts.clear();
    t.remote_ts.clear();
    t.connection_type = ConnectionType::AnswerOnly;
    t
}

impl Endpoint {
    /// Replaces the engine's tunnels and globals. A tunnel is unchanged when its `TunnelPolicy`
    /// is equal except perhaps for local settings (CHILD_SA lifetimes, DPD, connection type;
    /// these apply from the next rekey or check) and its name is not in `force` (the caller lists there the
    /// tunnels whose certificate material changed, which the engine cannot compare). Changed
    /// and removed tunnels lose their CHILD_SAs (Delete sent, `Event::ChildSaDown` with
    /// `DownReason::Cleared`); their IKE SA stays when a remaining tunnel to the same peer has
    /// the same IKE parameters (then a changed tunnel's CHILD_SA is negotiated again at once
    /// with CREATE_CHILD_SA), and is deleted otherwise (`Event::IkeSaDown`). Certificate
    /// material of unchanged tunnels is kept; changed and added tunnels start without any
    /// (call `set_cert_auth` before initiating them).
    pub fn reconfigure(&mut self, now: Instant, mut tunnels: Vec<TunnelPolicy>, mut globals: Ikev2Globals, force: &[String]) -> Reconfigured {
        self.last_now = Some(now);
        tunnels.iter_mut().for_each(clamp_tunnel);
        clamp_globals(&mut globals);
        let old = std::mem::take(&mut self.tunnels);
        let old_retired = std::mem::take(&mut self.retired);
        let is_live = |i: usize| !old_retired.get(i).copied().unwrap_or(false);

        // Classify by name.
        let mut out = Reconfigured::default();
        // new index of each old live tunnel that is kept or changed
        let mut new_of_old: Vec<Option<usize>> = vec![None; old.len()];
        let mut kept_old = vec![false; old.len()];
        for (j, t) in tunnels.iter().enumerate() {
            match (0..old.len()).find(|&i| is_live(i) && old[i].name == t.name) {
                Some(i) if same_but_local(&old[i], t) && !force.contains(&t.name) => {
                    kept_old[i] = true;
                    new_of_old[i] = Some(j);
                    out.kept.push(t.name.clone());
                }
                Some(i) => {
                    new_of_old[i] = Some(j);
                    out.changed.push(t.name.clone());
                }
                None => out.added.push(t.name.clone()),
            }
        }
        for (i, t) in old.iter().enumerate() {
            if is_live(i) && new_of_old[i].is_none() {
                out.removed.push(t.name.clone());
            }
        }

        // Decide the fate of every SA while the old tunnel list still names things correctly.
        let mut sas: Vec<_> = self.spis().into_iter().filter_map(|spi| self.sas.remove(&spi)).collect();
        // Per SA: the new index of the tunnel carrying its IKE SA on (None: deleted), and the
        // CHILD_SAs to negotiate again at once (new tunnel indices).
        let mut anchors: Vec<Option<usize>> = Vec::with_capacity(sas.len());
        let mut renew: Vec<Vec<usize>> = Vec::with_capacity(sas.len());
        let mut collateral: Vec<String> = Vec::new();
        self.tunnels = old.clone();
        for sa in sas.iter_mut() {
            let t_old = sa.tunnel;
            let anchor = if sa.dead {
                None
            } else if kept_old.get(t_old).copied().unwrap_or(false) {
                new_of_old[t_old]
            } else if is_live(t_old) {
                // The same tunnel with a child-level change, or another tunnel to this peer.
                let prefer = new_of_old[t_old];
                let ok = |j: usize| same_ike(&old[t_old], &tunnels[j]) && !force.contains(&tunnels[j].name);
                prefer.filter(|&j| ok(j)).or_else(|| (0..tunnels.len()).find(|&j| ok(j)))
            } else {
                None
            };
            let mut again = Vec::new();
            match anchor {
                None if !sa.dead => {
                    for c in sa.children.iter().filter(|c| !c.reported_down) {
                        if kept_old.get(c.tunnel).copied().unwrap_or(false) {
                            collateral.push(old[c.tunnel].name.clone());
                        }
                    }
                    if sa.is_up() {
                        self.report_down(sa, DownReason::Cleared);
                        sa.state = State::Deleting;
                        sa.queue.clear();
                        sa.queue.push_back(Req::DeleteIke);
                    } else if matches!(sa.state, State::InitSent | State::InitDone | State::AuthSent) {
                        self.kill(now, sa, DownReason::Cleared, false);
                    } else {
                        self.report_down_children_only(sa, DownReason::Cleared);
                    }
                }
                None => {}
                Some(_) => {
                    let mut gone = Vec::new();
                    for c in sa.children.iter_mut().filter(|c| !c.reported_down) {
                        if kept_old.get(c.tunnel).copied().unwrap_or(false) {
                            continue;
                        }
                        c.reported_down = true;
                        c.state = ChildState::Deleting;
                        gone.push(c.spi_in);
                        self.events.push_back(Event::ChildSaDown {
                            tunnel: old[c.tunnel].name.clone(),
                            spi_in: c.spi_in,
                            spi_out: c.spi_out,
                            reason: DownReason::Cleared,
                        });
                        if let Some(j) = new_of_old.get(c.tunnel).copied().flatten() {
                            if tunnels[j].connection_type != ConnectionType::AnswerOnly && !again.contains(&j) {
                                again.push(j);
                            }
                        }
                    }
                    if !gone.is_empty() {
                        sa.queue.push_back(Req::DeleteChildren(gone));
                    }
                }
            }
            anchors.push(anchor);
            renew.push(again);
        }
        for name in collateral {
            if !out.changed.contains(&name) {
                out.kept.retain(|k| *k != name);
                out.changed.push(name);
            }
        }

        // The new list: configured tunnels first, then retired copies of the old entries that
        // are not kept and that something still points at.
        let mut referenced: HashSet<usize> = HashSet::new();
        for sa in &sas {
            referenced.insert(sa.tunnel);
            referenced.extend(sa.children.iter().map(|c| c.tunnel));
            if let Some(super::Outstanding { pending: Pending::Child { tunnel, .. }, .. }) = &sa.out {
                referenced.insert(*tunnel);
            }
        }
        let mut map: Vec<Option<usize>> = vec![None; old.len()];
        let mut new_list = tunnels;
        let mut retired = vec![false; new_list.len()];
        let mut tstate: Vec<TunnelState> = vec![TunnelState { reinit_at: None, backoff: REINIT_BACKOFF_MIN }; new_list.len()];
        let mut cert = vec![None; new_list.len()];
        for i in 0..old.len() {
            if kept_old[i] {
                let j = new_of_old[i].unwrap_or(0);
                map[i] = Some(j);
                tstate[j] = self.tstate.get(i).cloned().unwrap_or(tstate[j].clone());
                cert[j] = self.cert.get(i).cloned().flatten();
            } else if referenced.contains(&i) {
                map[i] = Some(new_list.len());
                new_list.push(retired_copy(&old[i]));
                retired.push(true);
                tstate.push(TunnelState { reinit_at: None, backoff: REINIT_BACKOFF_MIN });
                cert.push(self.cert.get(i).cloned().flatten());
            }
        }
        self.tunnels = new_list;
        self.retired = retired;
        self.tstate = tstate;
        self.cert = cert;
        self.globals = globals;

        let remap = |i: usize| map.get(i).copied().flatten();
        for ((mut sa, anchor), again) in sas.into_iter().zip(anchors).zip(renew) {
            // Every index in `referenced` has a place in the new list.
            sa.tunnel = anchor.or_else(|| remap(sa.tunnel)).unwrap_or(0);
            for c in sa.children.iter_mut() {
                c.tunnel = remap(c.tunnel).unwrap_or(sa.tunnel);
            }
            if let Some(super::Outstanding { pending: Pending::Child { tunnel, .. }, .. }) = &mut sa.out {
                *tunnel = remap(*tunnel).unwrap_or(sa.tunnel);
            }
            let queue = std::mem::take(&mut sa.queue);
            sa.queue = queue
                .into_iter()
                .filter_map(|r| match r {
                    // A queued creation for an old tunnel: for the tunnel as now configured, if any.
                    Req::NewChild(t) => new_of_old.get(t).copied().flatten().map(Req::NewChild),
                    other => Some(other),
                })
                .collect();
            for j in again {
                if !sa.queue.iter().any(|r| matches!(r, Req::NewChild(t) if *t == j)) {
                    sa.queue.push_back(Req::NewChild(j));
                }
            }
            self.pump(now, &mut sa);
            self.put_back(sa);
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::super::tests_support::{established_pair, pump, tunnel};
    use super::*;
    use crate::Command;
    use policy::{Encryption, IpsecProposal};
    use std::time::Duration;

    fn spis(e: &Endpoint) -> Vec<(String, u32, u32)> {
        let mut v: Vec<_> = e.child_sas().into_iter().map(|c| (c.tunnel, c.spi_in, c.spi_out)).collect();
        v.sort();
        v
    }

    fn ike_spis(e: &Endpoint) -> Vec<(u64, u64)> {
        e.ike_sas().into_iter().filter(|s| s.status == crate::IkeStatus::Ready).map(|s| (s.spi_i, s.spi_r)).collect()
    }

    fn drain_events(e: &mut Endpoint) -> Vec<Event> {
        std::iter::from_fn(|| e.poll_event()).collect()
    }

    fn settle(a: &mut Endpoint, b: &mut Endpoint, mut now: Instant) -> Instant {
        for _ in 0..30 {
            now += Duration::from_millis(100);
            a.handle_timeout(now);
            b.handle_timeout(now);
            pump(a, b, now);
        }
        now
    }

    #[test]
    fn unchanged_configuration_keeps_every_sa() {
        let (mut a, mut b, now) = established_pair();
        let before = (spis(&a), ike_spis(&a));
        let t = tunnel("192.0.2.1", "192.0.2.2", "10.1.0.0", "10.2.0.0");
        let r = a.reconfigure(now, vec![t], Ikev2Globals::default(), &[]);
        assert_eq!(r.kept, vec!["M:192.0.2.2".to_string()]);
        assert!(r.changed.is_empty() && r.added.is_empty() && r.removed.is_empty());
        assert!(a.poll_transmit().is_none(), "nothing to tell the peer");
        assert!(drain_events(&mut a).is_empty());
        let now = settle(&mut a, &mut b, now);
        assert_eq!((spis(&a), ike_spis(&a)), before);
        let _ = now;
    }

    #[test]
    fn added_tunnel_to_the_same_peer_joins_the_ike_sa_and_the_first_keeps_its_spis() {
        let (mut a, mut b, now) = established_pair();
        let before = spis(&a);
        let ike_before = ike_spis(&a);
        let t1 = tunnel("192.0.2.1", "192.0.2.2", "10.1.0.0", "10.2.0.0");
        let mut t2 = tunnel("192.0.2.1", "192.0.2.2", "10.1.0.0", "10.3.0.0");
        t2.name = "M:2".into();
        // The peer knows the second network (answer-only there).
        let b1 = tunnel("192.0.2.2", "192.0.2.1", "10.2.0.0", "10.1.0.0");
        let mut b2 = tunnel("192.0.2.2", "192.0.2.1", "10.3.0.0", "10.1.0.0");
        b2.name = "M:2".into();
        b2.connection_type = ConnectionType::AnswerOnly;
        let rb = b.reconfigure(now, vec![b1, b2], Ikev2Globals::default(), &[]);
        assert_eq!(rb.added, vec!["M:2".to_string()]);
        let r = a.reconfigure(now, vec![t1, t2], Ikev2Globals::default(), &[]);
        assert_eq!(r.kept, vec!["M:192.0.2.2".to_string()]);
        assert_eq!(r.added, vec!["M:2".to_string()]);
        for n in r.to_initiate() {
            a.handle_command(now, Command::Initiate { tunnel: n.clone() });
        }
        pump(&mut a, &mut b, now);
        let after = spis(&a);
        assert_eq!(after.len(), 2, "{after:x?}");
        assert!(after.contains(&before[0]), "tunnel 1 keeps its SPIs");
        assert!(after.iter().any(|c| c.0 == "M:2"));
        assert_eq!(ike_spis(&a), ike_before, "one IKE SA, the same one");
    }

    #[test]
    fn changed_esp_proposal_renegotiates_the_child_on_the_same_ike_sa() {
        // The peer accepts both suites from the start; we switch to the second.
        let mut bt = tunnel("192.0.2.2", "192.0.2.1", "10.2.0.0", "10.1.0.0");
        bt.esp_proposals.push(IpsecProposal { name: "Q".into(), encryption: vec![Encryption::AesGcm128], integrity: vec![] });
        #[allow(clippy::disallowed_methods)] // the virtual clock needs some starting Instant
        let now = Instant::now();
        let mut a = Endpoint::new(vec![tunnel("192.0.2.1", "192.0.2.2", "10.1.0.0", "10.2.0.0")], Ikev2Globals::default(), Box::new(crypto::SeededRandom::new(5)));
        let mut b = Endpoint::new(vec![bt], Ikev2Globals::default(), Box::new(crypto::SeededRandom::new(6)));
        a.handle_command(now, Command::Initiate { tunnel: "M:192.0.2.2".into() });
        pump(&mut a, &mut b, now);
        let before = spis(&a);
        assert_eq!(before.len(), 1);
        assert_eq!(a.child_sas()[0].suite.encryption, Encryption::AesGcm256);
        let ike_before = ike_spis(&a);
        let mut t = tunnel("192.0.2.1", "192.0.2.2", "10.1.0.0", "10.2.0.0");
        t.esp_proposals = vec![IpsecProposal { name: "Q".into(), encryption: vec![Encryption::AesGcm128], integrity: vec![] }];
        let r = a.reconfigure(now, vec![t], Ikev2Globals::default(), &[]);
        assert_eq!(r.changed, vec!["M:192.0.2.2".to_string()]);
        let ev = drain_events(&mut a);
        assert!(ev.iter().any(|e| matches!(e, Event::ChildSaDown { spi_in, reason: DownReason::Cleared, .. } if *spi_in == before[0].1)), "{ev:?}");
        assert!(!ev.iter().any(|e| matches!(e, Event::IkeSaDown { .. })), "IKE SA kept: {ev:?}");
        pump(&mut a, &mut b, now);
        let now = settle(&mut a, &mut b, now);
        let after = spis(&a);
        assert_eq!(after.len(), 1, "{after:x?} before {before:x?} a {:?} b {:?}", a.child_sas(), b.child_sas());
        assert_ne!(after[0].1, before[0].1, "new SPIs");
        let info = a.child_sas();
        assert_eq!(info[0].suite.encryption, Encryption::AesGcm128);
        assert_eq!(ike_spis(&a), ike_before);
        // The peer deleted the old SA too.
        assert!(b.child_sas().iter().all(|c| c.spi_out != before[0].1));
        let _ = now;
    }

    #[test]
    fn changed_ike_policy_replaces_the_ike_sa_and_removed_tunnel_is_deleted() {
        let (mut a, mut b, now) = established_pair();
        let ike_before = ike_spis(&a);
        let mut t = tunnel("192.0.2.1", "192.0.2.2", "10.1.0.0", "10.2.0.0");
        t.local_psk = policy::Secret("other".into());
        t.remote_psk = policy::Secret("other".into());
        let r = a.reconfigure(now, vec![t.clone()], Ikev2Globals::default(), &[]);
        assert_eq!(r.changed, vec!["M:192.0.2.2".to_string()]);
        let ev = drain_events(&mut a);
        assert!(ev.iter().any(|e| matches!(e, Event::IkeSaDown { reason: DownReason::Cleared, .. })), "{ev:?}");
        pump(&mut a, &mut b, now);
        assert!(b.child_sas().is_empty(), "the peer got our Delete");
        assert!(ike_spis(&a).iter().all(|s| !ike_before.contains(s)));

        // Removing the (now idle) tunnel leaves nothing behind and nothing to initiate.
        let r = a.reconfigure(now, vec![], Ikev2Globals::default(), &[]);
        assert_eq!(r.removed, vec!["M:192.0.2.2".to_string()]);
        assert_eq!(r.to_initiate().count(), 0);
        // The name no longer resolves: an Initiate for it does nothing.
        a.handle_command(now, Command::Initiate { tunnel: "M:192.0.2.2".into() });
        assert!(a.poll_transmit().is_none());
    }

    #[test]
    fn removed_tunnel_deletes_its_sas_at_the_peer() {
        let (mut a, mut b, now) = established_pair();
        let r = a.reconfigure(now, vec![], Ikev2Globals::default(), &[]);
        assert_eq!(r.removed, vec!["M:192.0.2.2".to_string()]);
        let ev = drain_events(&mut a);
        assert!(ev.iter().any(|e| matches!(e, Event::ChildSaDown { .. })));
        assert!(ev.iter().any(|e| matches!(e, Event::IkeSaDown { .. })));
        pump(&mut a, &mut b, now);
        let now = settle(&mut a, &mut b, now);
        // The peer (which initiates too) tries again; we no longer know it.
        assert!(b.child_sas().is_empty(), "{:?}", b.child_sas());
        assert!(b.ike_sas().iter().all(|s| s.status != crate::IkeStatus::Ready), "{:?}", b.ike_sas());
        assert!(a.ike_sas().is_empty());
        // Nothing comes back on its own.
        let now = settle(&mut a, &mut b, now + Duration::from_secs(120));
        assert!(a.ike_sas().is_empty() && a.child_sas().is_empty());
        let _ = now;
    }

    #[test]
    fn local_settings_apply_without_touching_the_sas() {
        let (mut a, mut b, now) = established_pair();
        let before = (spis(&a), ike_spis(&a));
        let mut t = tunnel("192.0.2.1", "192.0.2.2", "10.1.0.0", "10.2.0.0");
        t.child_lifetime = Duration::from_secs(600);
        t.dpd = None;
        t.connection_type = ConnectionType::AnswerOnly;
        let r = a.reconfigure(now, vec![t], Ikev2Globals::default(), &[]);
        assert_eq!(r.kept, vec!["M:192.0.2.2".to_string()]);
        assert!(drain_events(&mut a).is_empty());
        assert!(a.poll_transmit().is_none());
        settle(&mut a, &mut b, now);
        assert_eq!((spis(&a), ike_spis(&a)), before);
        // The new lifetime governs the next CHILD_SA: the one we have rekeys on its old schedule,
        // its replacement on the new one.
        assert!(a.child_sas()[0].expires_in > Duration::from_secs(600));
    }

    #[test]
    fn forced_tunnel_counts_as_changed() {
        let (mut a, _b, now) = established_pair();
        let t = tunnel("192.0.2.1", "192.0.2.2", "10.1.0.0", "10.2.0.0");
        let r = a.reconfigure(now, vec![t], Ikev2Globals::default(), &["M:192.0.2.2".to_string()]);
        assert_eq!(r.changed, vec!["M:192.0.2.2".to_string()]);
        assert!(drain_events(&mut a).iter().any(|e| matches!(e, Event::IkeSaDown { .. })));
    }
}
