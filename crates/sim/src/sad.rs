//! A gateway's SA database as the daemon keeps it (crates/gateway/src/daemon.rs), rebuilt from
//! the engine's events only: the simulation checks what the data plane would do, not what the
//! engine believes.
//!
//! - `ChildSaUp`: the inbound SA is installed first, then the tunnel's outbound switches to the
//!   new SA (the newest SA of a tunnel carries the traffic); a replaced SA leaves the outbound
//!   list at once and its inbound lingers for [`INBOUND_LINGER`].
//! - `ChildSaUp` with `outbound_now: false` (the responder of a CHILD_SA rekey): only the
//!   inbound SA is installed; the tunnel keeps sending on the SA being replaced until
//!   `ChildSaOutbound` for the new SA, which then takes over and the replaced SA's inbound
//!   starts lingering.
//! - `ChildSaDown`: the outbound goes now, the inbound after [`INBOUND_LINGER`].

use esp::{InboundSa, OutboundSa, SaParams};
use std::collections::BTreeMap;
use std::time::{Duration, Instant};

/// How long a replaced or deleted inbound SA keeps decrypting (the daemon's `INBOUND_LINGER`).
pub const INBOUND_LINGER: Duration = Duration::from_secs(5);

/// One CHILD_SA as installed by the daemon.
pub struct Child {
    pub tunnel: String,
    pub up: ike::ChildSaUp,
    pub installed: Instant,
    pub inbound: InboundSa,
    pub outbound: OutboundSa,
    /// Set once the SA was replaced or deleted: the inbound goes at this time.
    pub remove_at: Option<Instant>,
    pub in_packets: u64,
    pub in_bytes: u64,
    pub out_bytes: u64,
    pub reported_packets: u64,
    pub reported_bytes: u64,
}

/// Something in the event stream the daemon could not make sense of.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum EventFault {
    /// `ChildSaUp` for an inbound SPI that is still installed.
    DuplicateInboundSpi(u32),
    /// ESP parameters the ESP layer refuses (bad key length, ...).
    Unusable(u32, String),
}

#[derive(Default)]
pub struct Sad {
    /// Every installed inbound SA (live or lingering), by inbound SPI.
    pub children: BTreeMap<u32, Child>,
    /// Per tunnel, the live SAs newest first; the first one carries outbound traffic.
    pub spd: BTreeMap<String, Vec<u32>>,
    /// Installed inbound-only (waiting for `ChildSaOutbound`), with the SA each replaces.
    pub pending: BTreeMap<u32, Option<u32>>,
}

impl Sad {
    pub fn child_up(&mut self, now: Instant, up: ike::ChildSaUp, rng: &mut dyn crypto::Random) -> Result<(), EventFault> {
        let spi = up.inbound.spi;
        if self.children.contains_key(&spi) {
            return Err(EventFault::DuplicateInboundSpi(spi));
        }
        let inbound = InboundSa::new(&up.inbound).map_err(|e| EventFault::Unusable(spi, e.to_string()))?;
        let outbound = OutboundSa::with_rng(&up.outbound, rng).map_err(|e| EventFault::Unusable(spi, e.to_string()))?;
        let tunnel = up.tunnel.clone();
        if up.outbound_now {
            self.switch(now, &tunnel, spi, up.replaces_spi_in);
        } else {
            self.pending.insert(spi, up.replaces_spi_in);
        }
        self.children.insert(
            spi,
            Child {
                tunnel,
                up,
                installed: now,
                inbound,
                outbound,
                remove_at: None,
                in_packets: 0,
                in_bytes: 0,
                out_bytes: 0,
                reported_packets: 0,
                reported_bytes: 0,
            },
        );
        Ok(())
    }

    /// The tunnel's outbound moves to `spi`; the SA it replaces stops sending and its
    /// inbound starts lingering.
    fn switch(&mut self, now: Instant, tunnel: &str, spi: u32, replaces: Option<u32>) {
        let list = self.spd.entry(tunnel.to_string()).or_default();
        if let Some(old) = replaces {
            list.retain(|s| *s != old);
            if let Some(c) = self.children.get_mut(&old) {
                c.remove_at.get_or_insert(now + INBOUND_LINGER);
            }
        }
        list.retain(|s| *s != spi);
        list.insert(0, spi);
    }

    /// `ChildSaOutbound`: false when the SPI is not waiting for it (unknown, already
    /// switched, or already down).
    pub fn child_outbound(&mut self, now: Instant, tunnel: &str, spi_in: u32) -> bool {
        let Some(replaces) = self.pending.remove(&spi_in) else { return false };
        if self.children.get(&spi_in).is_none_or(|c| c.remove_at.is_some()) {
            return false;
        }
        self.switch(now, tunnel, spi_in, replaces);
        true
    }

    /// Returns false when the SPI was not installed (the daemon ignores such a Down).
    pub fn child_down(&mut self, now: Instant, tunnel: &str, spi_in: u32) -> bool {
        if let Some(list) = self.spd.get_mut(tunnel) {
            list.retain(|s| *s != spi_in);
        }
        self.pending.remove(&spi_in);
        match self.children.get_mut(&spi_in) {
            Some(c) => {
                c.remove_at.get_or_insert(now + INBOUND_LINGER);
                true
            }
            None => false,
        }
    }

    /// The SA the tunnel's traffic leaves on.
    pub fn outbound(&self, tunnel: &str) -> Option<&Child> {
        self.spd.get(tunnel).and_then(|l| l.first()).and_then(|s| self.children.get(s))
    }

    /// Live SAs: sending ones and those installed inbound-only.
    pub fn has_child(&self, tunnel: &str) -> bool {
        !self.live_spis(tunnel).is_empty()
    }

    pub fn live_spis(&self, tunnel: &str) -> Vec<u32> {
        let mut v = self.spd.get(tunnel).cloned().unwrap_or_default();
        v.extend(self.pending.keys().filter(|s| self.children.get(s).is_some_and(|c| c.tunnel == tunnel)));
        v.sort_unstable();
        v
    }

    pub fn next_removal(&self) -> Option<Instant> {
        self.children.values().filter_map(|c| c.remove_at).min()
    }

    pub fn remove_due(&mut self, now: Instant) -> Vec<u32> {
        let due: Vec<u32> = self.children.iter().filter(|(_, c)| c.remove_at.is_some_and(|t| t <= now)).map(|(s, _)| *s).collect();
        for s in &due {
            self.children.remove(s);
        }
        due
    }

    /// Does `params` (the peer's outbound) decrypt here right now?
    pub fn accepts(&self, params: &SaParams) -> Option<&Child> {
        self.children.get(&params.spi).filter(|c| c.up.inbound == *params)
    }

    pub fn clear(&mut self) {
        self.children.clear();
        self.spd.clear();
        self.pending.clear();
    }
}
