//! IKEv2 message codec (RFC 7296 §3): the fixed header, the generic payload chain and the
//! payload bodies, as borrowing views over the received datagram.
//!
//! [`Message::parse`] checks every length once and rejects truncation, trailing bytes and
//! inconsistent length fields with a typed [`ParseError`]; the engine never indexes raw bytes.
//! The same [`Payload`] values are used to emit (`Message::emit`, [`emit_chain`]), so a
//! parse -> emit round trip reproduces the input of a well-formed message.
//!
//! The Encrypted payload (SK, §3.14) and the Encrypted Fragment payload (SKF, RFC 7383 §2.5) are
//! kept opaque: the engine decrypts their body and parses the inner chain with [`parse_chain`].

use std::fmt;

/// Length of the fixed IKE header (RFC 7296 §3.1).
pub const HEADER_LEN: usize = 28;
/// Length of the generic payload header (RFC 7296 §3.2).
pub const GENERIC_HEADER_LEN: usize = 4;

/// Header flag bits (RFC 7296 §3.1).
pub mod flags {
    pub const INITIATOR: u8 = 0x08;
    pub const VERSION: u8 = 0x10;
    pub const RESPONSE: u8 = 0x20;
}

/// Why a message was rejected. The engine maps these to INVALID_SYNTAX (or silently drops),
/// see RFC 7296 §2.21.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ParseError {
    #[error("truncated {what}: need {need} bytes, have {have}")]
    Truncated { what: &'static str, need: usize, have: usize },
    #[error("{what}: length field {field} does not match the {actual} bytes available")]
    LengthMismatch { what: &'static str, field: usize, actual: usize },
    #[error("{count} trailing bytes after {what}")]
    TrailingBytes { what: &'static str, count: usize },
    #[error("unsupported IKE major version {0}")]
    MajorVersion(u8),
    #[error("invalid {0}")]
    Invalid(&'static str),
}

// ---------------------------------------------------------------------------------------------
// Registries (IANA "Internet Key Exchange Version 2 (IKEv2) Parameters"), in table order.
// Unknown values are kept so that a peer's unknown transform or notify can be skipped, not fail.

macro_rules! registry {
    ($(#[$m:meta])* $name:ident : $repr:ty { $($var:ident = $val:expr),* $(,)? }) => {
        $(#[$m])*
        #[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
        pub enum $name { $($var,)* Unknown($repr) }
        impl From<$repr> for $name {
            fn from(v: $repr) -> Self { match v { $($val => Self::$var,)* other => Self::Unknown(other) } }
        }
        impl From<$name> for $repr {
            fn from(v: $name) -> $repr { match v { $($name::$var => $val,)* $name::Unknown(x) => x } }
        }
        impl $name {
            pub fn value(self) -> $repr { self.into() }
        }
    };
}

registry!(
    /// Exchange types (RFC 7296 §3.1).
    ExchangeType: u8 { IkeSaInit = 34, IkeAuth = 35, CreateChildSa = 36, Informational = 37 }
);

registry!(
    /// Payload types (RFC 7296 §3.2, RFC 7383).
    PayloadType: u8 {
        NoNext = 0, Sa = 33, Ke = 34, IdI = 35, IdR = 36, Cert = 37, CertReq = 38, Auth = 39,
        Nonce = 40, Notify = 41, Delete = 42, VendorId = 43, TsI = 44, TsR = 45, Sk = 46, Cp = 47,
        Eap = 48, Skf = 53,
    }
);

registry!(
    /// Security protocol identifiers (RFC 7296 §3.3.1).
    ProtocolId: u8 { Ike = 1, Ah = 2, Esp = 3 }
);

registry!(
    /// Transform types (RFC 7296 §3.3.2).
    TransformType: u8 { Encr = 1, Prf = 2, Integ = 3, Dh = 4, Esn = 5 }
);

registry!(
    /// Transform type 1 IDs (encryption).
    EncrId: u16 { Des = 2, TripleDes = 3, Null = 11, AesCbc = 12, AesCtr = 13, AesGcm8 = 18, AesGcm12 = 19, AesGcm16 = 20 }
);

registry!(
    /// Transform type 2 IDs (PRF).
    PrfId: u16 { HmacMd5 = 1, HmacSha1 = 2, AesXcbc = 4, HmacSha2_256 = 5, HmacSha2_384 = 6, HmacSha2_512 = 7 }
);

registry!(
    /// Transform type 3 IDs (integrity).
    IntegId: u16 {
        None = 0, HmacMd5_96 = 1, HmacSha1_96 = 2, AesXcbc96 = 5, HmacSha2_256_128 = 12,
        HmacSha2_384_192 = 13, HmacSha2_512_256 = 14,
    }
);

registry!(
    /// Transform type 5 IDs (extended sequence numbers).
    EsnId: u16 { No = 0, Yes = 1 }
);

registry!(
    /// Transform attribute types (RFC 7296 §3.3.5).
    AttributeType: u16 { KeyLength = 14 }
);

registry!(
    /// Identification types (RFC 7296 §3.5).
    IdType: u8 { Ipv4Addr = 1, Fqdn = 2, Rfc822Addr = 3, Ipv6Addr = 5, DerAsn1Dn = 9, DerAsn1Gn = 10, KeyId = 11 }
);

registry!(
    /// Authentication methods (RFC 7296 §3.8, RFC 4754, RFC 7427).
    AuthMethod: u8 { RsaSig = 1, SharedKeyMic = 2, DssSig = 3, Ecdsa256 = 9, Ecdsa384 = 10, Ecdsa521 = 11, DigitalSignature = 14 }
);

registry!(
    /// Notify message types (RFC 7296 §3.10.1 and later registrations).
    NotifyType: u16 {
        UnsupportedCriticalPayload = 1, InvalidIkeSpi = 4, InvalidMajorVersion = 5, InvalidSyntax = 7,
        InvalidMessageId = 9, InvalidSpi = 11, NoProposalChosen = 14, InvalidKePayload = 17,
        AuthenticationFailed = 24, SinglePairRequired = 34, NoAdditionalSas = 35,
        InternalAddressFailure = 36, FailedCpRequired = 37, TsUnacceptable = 38, InvalidSelectors = 39,
        TemporaryFailure = 43, ChildSaNotFound = 44,
        InitialContact = 16384, SetWindowSize = 16385, AdditionalTsPossible = 16386,
        IpcompSupported = 16387, NatDetectionSourceIp = 16388, NatDetectionDestinationIp = 16389,
        Cookie = 16390, UseTransportMode = 16391, HttpCertLookupSupported = 16392, RekeySa = 16393,
        EspTfcPaddingNotSupported = 16394, NonFirstFragmentsAlso = 16395, MobikeSupported = 16396,
        MultipleAuthSupported = 16404, RedirectSupported = 16406, Ikev2FragmentationSupported = 16430,
        SignatureHashAlgorithms = 16431,
    }
);

impl NotifyType {
    /// RFC 7296 §3.10.1: types below 16384 report errors.
    pub fn is_error(self) -> bool {
        self.value() < 16384
    }
}

registry!(
    /// Traffic selector types (RFC 7296 §3.13.1).
    TsType: u8 { Ipv4AddrRange = 7, Ipv6AddrRange = 8 }
);

// ---------------------------------------------------------------------------------------------
// Header

/// The fixed IKE header (RFC 7296 §3.1). `length` is checked against the datagram on parse and
/// computed on emit.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Header {
    pub spi_i: u64,
    pub spi_r: u64,
    pub next_payload: PayloadType,
    pub major: u8,
    pub minor: u8,
    pub exchange: ExchangeType,
    pub flags: u8,
    pub message_id: u32,
    pub length: u32,
}

impl Header {
    pub fn new(spi_i: u64, spi_r: u64, exchange: ExchangeType, flags: u8, message_id: u32) -> Self {
        Self { spi_i, spi_r, next_payload: PayloadType::NoNext, major: 2, minor: 0, exchange, flags, message_id, length: 0 }
    }
    pub fn is_response(&self) -> bool {
        self.flags & flags::RESPONSE != 0
    }
    pub fn is_initiator(&self) -> bool {
        self.flags & flags::INITIATOR != 0
    }

    /// Parses the header only (used to route a datagram before the rest is looked at). Does not
    /// check `length` against the datagram.
    pub fn parse(data: &[u8]) -> Result<Self, ParseError> {
        let mut r = Reader::new(data, "IKE header");
        let spi_i = r.u64()?;
        let spi_r = r.u64()?;
        let next_payload = PayloadType::from(r.u8()?);
        let version = r.u8()?;
        let exchange = ExchangeType::from(r.u8()?);
        let flags = r.u8()?;
        let message_id = r.u32()?;
        let length = r.u32()?;
        let major = version >> 4;
        if major != 2 {
            return Err(ParseError::MajorVersion(major));
        }
        Ok(Self { spi_i, spi_r, next_payload, major, minor: version & 0x0f, exchange, flags, message_id, length })
    }

    /// Writes the header with the given next payload and total message length.
    pub fn emit(&self, next: PayloadType, length: u32, out: &mut Vec<u8>) {
        out.extend_from_slice(&self.spi_i.to_be_bytes());
        out.extend_from_slice(&self.spi_r.to_be_bytes());
        out.push(next.value());
        out.push((self.major << 4) | (self.minor & 0x0f));
        out.push(self.exchange.value());
        out.push(self.flags);
        out.extend_from_slice(&self.message_id.to_be_bytes());
        out.extend_from_slice(&length.to_be_bytes());
    }
}

/// Writes a generic payload header (RFC 7296 §3.2). `len` includes the 4 header bytes.
pub fn emit_generic_header(next: PayloadType, critical: bool, len: u16, out: &mut Vec<u8>) {
    out.push(next.value());
    out.push(if critical { 0x80 } else { 0 });
    out.extend_from_slice(&len.to_be_bytes());
}

// ---------------------------------------------------------------------------------------------
// Payload bodies

/// A transform attribute (RFC 7296 §3.3.5): TV (AF=1, 2-byte value) or TLV.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AttrValue<'a> {
    Tv(u16),
    Tlv(&'a [u8]),
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Attribute<'a> {
    pub ty: AttributeType,
    pub value: AttrValue<'a>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Transform<'a> {
    pub ty: TransformType,
    pub id: u16,
    pub attributes: Vec<Attribute<'a>>,
}

impl<'a> Transform<'a> {
    pub fn new(ty: TransformType, id: u16) -> Self {
        Self { ty, id, attributes: Vec::new() }
    }
    pub fn with_key_length(ty: TransformType, id: u16, bits: u16) -> Self {
        Self { ty, id, attributes: vec![Attribute { ty: AttributeType::KeyLength, value: AttrValue::Tv(bits) }] }
    }
    /// The KEY_LENGTH attribute, if present.
    pub fn key_length(&self) -> Option<u16> {
        self.attributes.iter().find_map(|a| match (a.ty, a.value) {
            (AttributeType::KeyLength, AttrValue::Tv(v)) => Some(v),
            _ => None,
        })
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Proposal<'a> {
    pub number: u8,
    pub protocol: ProtocolId,
    pub spi: &'a [u8],
    pub transforms: Vec<Transform<'a>>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Identification<'a> {
    pub ty: IdType,
    pub data: &'a [u8],
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Notify<'a> {
    pub protocol: u8,
    pub spi: &'a [u8],
    pub ty: NotifyType,
    pub data: &'a [u8],
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Delete<'a> {
    pub protocol: ProtocolId,
    pub spi_size: u8,
    pub spis: Vec<&'a [u8]>,
}

/// One traffic selector (RFC 7296 §3.13.1). Addresses are 4 (IPv4) or 16 (IPv6) bytes; for
/// unknown selector types the whole address area is kept in `start_addr`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Selector<'a> {
    pub ty: TsType,
    pub ip_protocol: u8,
    pub start_port: u16,
    pub end_port: u16,
    pub start_addr: &'a [u8],
    pub end_addr: &'a [u8],
}

/// A decoded payload. `Sk`/`Skf` bodies are ciphertext (IV || encrypted || ICV).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Payload<'a> {
    Sa(Vec<Proposal<'a>>),
    Ke { group: u16, data: &'a [u8] },
    IdI(Identification<'a>),
    IdR(Identification<'a>),
    Cert { encoding: u8, data: &'a [u8] },
    CertReq { encoding: u8, data: &'a [u8] },
    Auth { method: AuthMethod, data: &'a [u8] },
    Nonce(&'a [u8]),
    Notify(Notify<'a>),
    Delete(Delete<'a>),
    VendorId(&'a [u8]),
    TsI(Vec<Selector<'a>>),
    TsR(Vec<Selector<'a>>),
    Sk { first_inner: PayloadType, body: &'a [u8] },
    Skf { first_inner: PayloadType, number: u16, total: u16, body: &'a [u8] },
    /// Any other payload (CP, EAP, unregistered types). An unknown payload with the critical bit
    /// set must make the engine reject the message (RFC 7296 §2.5).
    Unknown { ty: PayloadType, critical: bool, body: &'a [u8] },
}

impl<'a> Payload<'a> {
    pub fn kind(&self) -> PayloadType {
        match self {
            Payload::Sa(_) => PayloadType::Sa,
            Payload::Ke { .. } => PayloadType::Ke,
            Payload::IdI(_) => PayloadType::IdI,
            Payload::IdR(_) => PayloadType::IdR,
            Payload::Cert { .. } => PayloadType::Cert,
            Payload::CertReq { .. } => PayloadType::CertReq,
            Payload::Auth { .. } => PayloadType::Auth,
            Payload::Nonce(_) => PayloadType::Nonce,
            Payload::Notify(_) => PayloadType::Notify,
            Payload::Delete(_) => PayloadType::Delete,
            Payload::VendorId(_) => PayloadType::VendorId,
            Payload::TsI(_) => PayloadType::TsI,
            Payload::TsR(_) => PayloadType::TsR,
            Payload::Sk { .. } => PayloadType::Sk,
            Payload::Skf { .. } => PayloadType::Skf,
            Payload::Unknown { ty, .. } => *ty,
        }
    }

    /// A notify payload without SPI (the common case).
    pub fn notify(ty: NotifyType, data: &'a [u8]) -> Self {
        Payload::Notify(Notify { protocol: 0, spi: &[], ty, data })
    }
}

/// A parsed message: header plus the outer payload chain.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Message<'a> {
    pub header: Header,
    pub payloads: Vec<Payload<'a>>,
}

impl<'a> Message<'a> {
    /// Parses a complete IKE message (one UDP datagram without the non-ESP marker).
    pub fn parse(data: &'a [u8]) -> Result<Self, ParseError> {
        let header = Header::parse(data)?;
        let len = header.length as usize;
        if len != data.len() {
            return Err(ParseError::LengthMismatch { what: "IKE message", field: len, actual: data.len() });
        }
        let body = data.get(HEADER_LEN..).ok_or(ParseError::Truncated { what: "IKE header", need: HEADER_LEN, have: data.len() })?;
        let payloads = parse_chain(header.next_payload, body)?;
        Ok(Self { header, payloads })
    }

    /// Emits the message with correct next-payload links and lengths.
    pub fn emit(&self) -> Vec<u8> {
        let (first, chain) = emit_chain(&self.payloads);
        let mut out = Vec::with_capacity(HEADER_LEN + chain.len());
        self.header.emit(first, (HEADER_LEN + chain.len()) as u32, &mut out);
        out.extend_from_slice(&chain);
        out
    }

    pub fn notifies(&self) -> impl Iterator<Item = &Notify<'a>> {
        self.payloads.iter().filter_map(|p| match p {
            Payload::Notify(n) => Some(n),
            _ => None,
        })
    }
}

/// Parses a payload chain starting with payload type `first` that must exactly fill `data`.
/// An SK or SKF payload must be the last one (RFC 7296 §3.14): its next-payload field names the
/// first payload inside the ciphertext, not a following payload.
pub fn parse_chain(first: PayloadType, data: &[u8]) -> Result<Vec<Payload<'_>>, ParseError> {
    let mut r = Reader::new(data, "payload chain");
    let mut next = first;
    let mut out = Vec::new();
    while next != PayloadType::NoNext {
        let this = next;
        let mut h = Reader::new(r.rest_peek(), "generic payload header");
        let nxt = PayloadType::from(h.u8()?);
        let flags = h.u8()?;
        let plen = usize::from(h.u16()?);
        if plen < GENERIC_HEADER_LEN {
            return Err(ParseError::LengthMismatch { what: "payload", field: plen, actual: GENERIC_HEADER_LEN });
        }
        let whole = r.take(plen).map_err(|_| ParseError::LengthMismatch { what: "payload", field: plen, actual: r.remaining() })?;
        let body = &whole[GENERIC_HEADER_LEN..];
        let critical = flags & 0x80 != 0;
        let p = parse_body(this, nxt, critical, body)?;
        let encrypted = matches!(p, Payload::Sk { .. } | Payload::Skf { .. });
        out.push(p);
        if encrypted {
            if r.remaining() != 0 {
                return Err(ParseError::TrailingBytes { what: "encrypted payload", count: r.remaining() });
            }
            return Ok(out);
        }
        next = nxt;
        if next != PayloadType::NoNext && r.remaining() == 0 {
            return Err(ParseError::Truncated { what: "payload chain", need: GENERIC_HEADER_LEN, have: 0 });
        }
    }
    r.end()?;
    Ok(out)
}

fn parse_body<'a>(ty: PayloadType, next: PayloadType, critical: bool, body: &'a [u8]) -> Result<Payload<'a>, ParseError> {
    Ok(match ty {
        PayloadType::Sa => Payload::Sa(parse_sa(body)?),
        PayloadType::Ke => {
            let mut r = Reader::new(body, "KE payload");
            let group = r.u16()?;
            r.u16()?;
            Payload::Ke { group, data: r.rest() }
        }
        PayloadType::IdI | PayloadType::IdR => {
            let mut r = Reader::new(body, "ID payload");
            let t = IdType::from(r.u8()?);
            r.take(3)?;
            let id = Identification { ty: t, data: r.rest() };
            if ty == PayloadType::IdI { Payload::IdI(id) } else { Payload::IdR(id) }
        }
        PayloadType::Cert | PayloadType::CertReq => {
            let mut r = Reader::new(body, "certificate payload");
            let encoding = r.u8()?;
            let data = r.rest();
            if ty == PayloadType::Cert { Payload::Cert { encoding, data } } else { Payload::CertReq { encoding, data } }
        }
        PayloadType::Auth => {
            let mut r = Reader::new(body, "AUTH payload");
            let method = AuthMethod::from(r.u8()?);
            r.take(3)?;
            Payload::Auth { method, data: r.rest() }
        }
        PayloadType::Nonce => Payload::Nonce(body),
        PayloadType::Notify => {
            let mut r = Reader::new(body, "Notify payload");
            let protocol = r.u8()?;
            let spi_size = usize::from(r.u8()?);
            let nt = NotifyType::from(r.u16()?);
            let spi = r.take(spi_size)?;
            Payload::Notify(Notify { protocol, spi, ty: nt, data: r.rest() })
        }
        PayloadType::Delete => {
            let mut r = Reader::new(body, "Delete payload");
            let protocol = ProtocolId::from(r.u8()?);
            let spi_size = r.u8()?;
            let n = usize::from(r.u16()?);
            let total = n.checked_mul(usize::from(spi_size)).ok_or(ParseError::Invalid("Delete SPI count"))?;
            if total != r.remaining() {
                return Err(ParseError::LengthMismatch { what: "Delete SPIs", field: total, actual: r.remaining() });
            }
            let mut spis = Vec::with_capacity(n.min(256));
            if spi_size > 0 {
                for _ in 0..n {
                    spis.push(r.take(usize::from(spi_size))?);
                }
            } else if n != 0 {
                return Err(ParseError::Invalid("Delete with SPI size 0 and SPIs"));
            }
            Payload::Delete(Delete { protocol, spi_size, spis })
        }
        PayloadType::VendorId => Payload::VendorId(body),
        PayloadType::TsI | PayloadType::TsR => {
            let sels = parse_ts(body)?;
            if ty == PayloadType::TsI { Payload::TsI(sels) } else { Payload::TsR(sels) }
        }
        PayloadType::Sk => Payload::Sk { first_inner: next, body },
        PayloadType::Skf => {
            let mut r = Reader::new(body, "SKF payload");
            let number = r.u16()?;
            let total = r.u16()?;
            // RFC 7383 §2.5: numbers start at 1 and never exceed the total.
            if number == 0 || number > total {
                return Err(ParseError::Invalid("fragment number"));
            }
            Payload::Skf { first_inner: next, number, total, body: r.rest() }
        }
        other => Payload::Unknown { ty: other, critical, body },
    })
}

fn parse_sa(body: &[u8]) -> Result<Vec<Proposal<'_>>, ParseError> {
    let mut r = Reader::new(body, "SA payload");
    let mut out = Vec::new();
    loop {
        let mut h = Reader::new(r.rest_peek(), "proposal header");
        let last = h.u8()?;
        h.u8()?;
        let plen = usize::from(h.u16()?);
        if plen < 8 {
            return Err(ParseError::LengthMismatch { what: "proposal", field: plen, actual: 8 });
        }
        let whole = r.take(plen).map_err(|_| ParseError::LengthMismatch { what: "proposal", field: plen, actual: r.remaining() })?;
        let mut p = Reader::new(&whole[4..], "proposal");
        let number = p.u8()?;
        let protocol = ProtocolId::from(p.u8()?);
        let spi_size = usize::from(p.u8()?);
        let ntrans = usize::from(p.u8()?);
        let spi = p.take(spi_size)?;
        let mut transforms = Vec::with_capacity(ntrans);
        for i in 0..ntrans {
            let mut th = Reader::new(p.rest_peek(), "transform header");
            let tlast = th.u8()?;
            th.u8()?;
            let tlen = usize::from(th.u16()?);
            if tlen < 8 {
                return Err(ParseError::LengthMismatch { what: "transform", field: tlen, actual: 8 });
            }
            let tw = p.take(tlen).map_err(|_| ParseError::LengthMismatch { what: "transform", field: tlen, actual: p.remaining() })?;
            let expect_last = if i + 1 == ntrans { 0 } else { 3 };
            if tlast != expect_last {
                return Err(ParseError::Invalid("transform last-substructure flag"));
            }
            let mut t = Reader::new(&tw[4..], "transform");
            let tty = TransformType::from(t.u8()?);
            t.u8()?;
            let id = t.u16()?;
            let mut attributes = Vec::new();
            while t.remaining() > 0 {
                let raw = t.u16()?;
                let aty = AttributeType::from(raw & 0x7fff);
                let value = if raw & 0x8000 != 0 {
                    AttrValue::Tv(t.u16()?)
                } else {
                    let alen = usize::from(t.u16()?);
                    AttrValue::Tlv(t.take(alen)?)
                };
                attributes.push(Attribute { ty: aty, value });
            }
            transforms.push(Transform { ty: tty, id, attributes });
        }
        p.end()?;
        out.push(Proposal { number, protocol, spi, transforms });
        match last {
            0 => break,
            2 => {
                if r.remaining() == 0 {
                    return Err(ParseError::Truncated { what: "SA payload", need: 8, have: 0 });
                }
            }
            _ => return Err(ParseError::Invalid("proposal last-substructure flag")),
        }
    }
    r.end()?;
    Ok(out)
}

fn parse_ts(body: &[u8]) -> Result<Vec<Selector<'_>>, ParseError> {
    let mut r = Reader::new(body, "TS payload");
    let n = usize::from(r.u8()?);
    r.take(3)?;
    let mut out = Vec::with_capacity(n);
    for _ in 0..n {
        let mut h = Reader::new(r.rest_peek(), "traffic selector");
        h.u8()?;
        h.u8()?;
        let slen = usize::from(h.u16()?);
        if slen < 8 {
            return Err(ParseError::LengthMismatch { what: "traffic selector", field: slen, actual: 8 });
        }
        let whole = r.take(slen).map_err(|_| ParseError::LengthMismatch { what: "traffic selector", field: slen, actual: r.remaining() })?;
        let mut s = Reader::new(whole, "traffic selector");
        let ty = TsType::from(s.u8()?);
        let ip_protocol = s.u8()?;
        s.u16()?;
        let start_port = s.u16()?;
        let end_port = s.u16()?;
        let (start_addr, end_addr) = match ty {
            TsType::Ipv4AddrRange | TsType::Ipv6AddrRange => {
                let alen = if ty == TsType::Ipv4AddrRange { 4 } else { 16 };
                let a = s.take(alen)?;
                let b = s.take(alen)?;
                s.end()?;
                (a, b)
            }
            TsType::Unknown(_) => (s.rest(), &[][..]),
        };
        out.push(Selector { ty, ip_protocol, start_port, end_port, start_addr, end_addr });
    }
    r.end()?;
    Ok(out)
}

// ---------------------------------------------------------------------------------------------
// Emitting

/// Emits a payload chain; returns the type of the first payload (for the header or the SK
/// payload's next-payload field) and the bytes. An `Sk`/`Skf` payload is written with its
/// `first_inner` as next payload and must be last.
pub fn emit_chain(payloads: &[Payload<'_>]) -> (PayloadType, Vec<u8>) {
    let mut out = Vec::new();
    for (i, p) in payloads.iter().enumerate() {
        let next = match p {
            Payload::Sk { first_inner, .. } | Payload::Skf { first_inner, .. } => *first_inner,
            _ => payloads.get(i + 1).map(|n| n.kind()).unwrap_or(PayloadType::NoNext),
        };
        let critical = matches!(p, Payload::Unknown { critical: true, .. });
        let start = out.len();
        emit_generic_header(next, critical, 0, &mut out);
        emit_body(p, &mut out);
        let len = (out.len() - start) as u16;
        out[start + 2..start + 4].copy_from_slice(&len.to_be_bytes());
    }
    (payloads.first().map(|p| p.kind()).unwrap_or(PayloadType::NoNext), out)
}

fn emit_body(p: &Payload<'_>, out: &mut Vec<u8>) {
    match p {
        Payload::Sa(props) => {
            for (i, prop) in props.iter().enumerate() {
                let start = out.len();
                out.push(if i + 1 == props.len() { 0 } else { 2 });
                out.push(0);
                out.extend_from_slice(&[0, 0]);
                out.push(prop.number);
                out.push(prop.protocol.value());
                out.push(prop.spi.len() as u8);
                out.push(prop.transforms.len() as u8);
                out.extend_from_slice(prop.spi);
                for (j, t) in prop.transforms.iter().enumerate() {
                    let ts = out.len();
                    out.push(if j + 1 == prop.transforms.len() { 0 } else { 3 });
                    out.push(0);
                    out.extend_from_slice(&[0, 0]);
                    out.push(t.ty.value());
                    out.push(0);
                    out.extend_from_slice(&t.id.to_be_bytes());
                    for a in &t.attributes {
                        match a.value {
                            AttrValue::Tv(v) => {
                                out.extend_from_slice(&(0x8000 | (a.ty.value() & 0x7fff)).to_be_bytes());
                                out.extend_from_slice(&v.to_be_bytes());
                            }
                            AttrValue::Tlv(d) => {
                                out.extend_from_slice(&(a.ty.value() & 0x7fff).to_be_bytes());
                                out.extend_from_slice(&(d.len() as u16).to_be_bytes());
                                out.extend_from_slice(d);
                            }
                        }
                    }
                    let tl = (out.len() - ts) as u16;
                    out[ts + 2..ts + 4].copy_from_slice(&tl.to_be_bytes());
                }
                let pl = (out.len() - start) as u16;
                out[start + 2..start + 4].copy_from_slice(&pl.to_be_bytes());
            }
        }
        Payload::Ke { group, data } => {
            out.extend_from_slice(&group.to_be_bytes());
            out.extend_from_slice(&[0, 0]);
            out.extend_from_slice(data);
        }
        Payload::IdI(id) | Payload::IdR(id) => {
            out.push(id.ty.value());
            out.extend_from_slice(&[0, 0, 0]);
            out.extend_from_slice(id.data);
        }
        Payload::Cert { encoding, data } | Payload::CertReq { encoding, data } => {
            out.push(*encoding);
            out.extend_from_slice(data);
        }
        Payload::Auth { method, data } => {
            out.push(method.value());
            out.extend_from_slice(&[0, 0, 0]);
            out.extend_from_slice(data);
        }
        Payload::Nonce(d) | Payload::VendorId(d) => out.extend_from_slice(d),
        Payload::Notify(n) => {
            out.push(n.protocol);
            out.push(n.spi.len() as u8);
            out.extend_from_slice(&n.ty.value().to_be_bytes());
            out.extend_from_slice(n.spi);
            out.extend_from_slice(n.data);
        }
        Payload::Delete(d) => {
            out.push(d.protocol.value());
            out.push(d.spi_size);
            out.extend_from_slice(&(d.spis.len() as u16).to_be_bytes());
            for s in &d.spis {
                out.extend_from_slice(s);
            }
        }
        Payload::TsI(sels) | Payload::TsR(sels) => {
            out.push(sels.len() as u8);
            out.extend_from_slice(&[0, 0, 0]);
            for s in sels {
                out.push(s.ty.value());
                out.push(s.ip_protocol);
                let len = (8 + s.start_addr.len() + s.end_addr.len()) as u16;
                out.extend_from_slice(&len.to_be_bytes());
                out.extend_from_slice(&s.start_port.to_be_bytes());
                out.extend_from_slice(&s.end_port.to_be_bytes());
                out.extend_from_slice(s.start_addr);
                out.extend_from_slice(s.end_addr);
            }
        }
        Payload::Sk { body, .. } => out.extend_from_slice(body),
        Payload::Skf { number, total, body, .. } => {
            out.extend_from_slice(&number.to_be_bytes());
            out.extend_from_slice(&total.to_be_bytes());
            out.extend_from_slice(body);
        }
        Payload::Unknown { body, .. } => out.extend_from_slice(body),
    }
}

// ---------------------------------------------------------------------------------------------
// Bounds-checked reader

struct Reader<'a> {
    buf: &'a [u8],
    what: &'static str,
}

impl<'a> Reader<'a> {
    fn new(buf: &'a [u8], what: &'static str) -> Self {
        Self { buf, what }
    }
    fn remaining(&self) -> usize {
        self.buf.len()
    }
    fn take(&mut self, n: usize) -> Result<&'a [u8], ParseError> {
        if n > self.buf.len() {
            return Err(ParseError::Truncated { what: self.what, need: n, have: self.buf.len() });
        }
        let (a, b) = self.buf.split_at(n);
        self.buf = b;
        Ok(a)
    }
    fn u8(&mut self) -> Result<u8, ParseError> {
        Ok(self.take(1)?[0])
    }
    fn u16(&mut self) -> Result<u16, ParseError> {
        let b = self.take(2)?;
        Ok(u16::from_be_bytes([b[0], b[1]]))
    }
    fn u32(&mut self) -> Result<u32, ParseError> {
        let b = self.take(4)?;
        Ok(u32::from_be_bytes([b[0], b[1], b[2], b[3]]))
    }
    fn u64(&mut self) -> Result<u64, ParseError> {
        let b = self.take(8)?;
        let mut a = [0u8; 8];
        a.copy_from_slice(b);
        Ok(u64::from_be_bytes(a))
    }
    fn rest(&mut self) -> &'a [u8] {
        std::mem::take(&mut self.buf)
    }
    fn rest_peek(&self) -> &'a [u8] {
        self.buf
    }
    fn end(&self) -> Result<(), ParseError> {
        if self.buf.is_empty() {
            Ok(())
        } else {
            Err(ParseError::TrailingBytes { what: self.what, count: self.buf.len() })
        }
    }
}

impl fmt::Display for ExchangeType {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::IkeSaInit => f.write_str("IKE_SA_INIT"),
            Self::IkeAuth => f.write_str("IKE_AUTH"),
            Self::CreateChildSa => f.write_str("CREATE_CHILD_SA"),
            Self::Informational => f.write_str("INFORMATIONAL"),
            Self::Unknown(v) => write!(f, "EXCHANGE({v})"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn sample_payloads() -> Vec<Payload<'static>> {
        vec![
            Payload::Sa(vec![
                Proposal {
                    number: 1,
                    protocol: ProtocolId::Ike,
                    spi: &[],
                    transforms: vec![
                        Transform::with_key_length(TransformType::Encr, EncrId::AesGcm16.value(), 256),
                        Transform::new(TransformType::Prf, PrfId::HmacSha2_256.value()),
                        Transform::new(TransformType::Dh, 31),
                    ],
                },
                Proposal {
                    number: 2,
                    protocol: ProtocolId::Esp,
                    spi: &[1, 2, 3, 4],
                    transforms: vec![Transform::new(TransformType::Esn, 0)],
                },
            ]),
            Payload::Ke { group: 31, data: &[7; 32] },
            Payload::Nonce(&[9; 32]),
            Payload::notify(NotifyType::NatDetectionSourceIp, &[1; 20]),
            Payload::IdI(Identification { ty: IdType::Ipv4Addr, data: &[192, 0, 2, 1] }),
            Payload::TsI(vec![Selector {
                ty: TsType::Ipv4AddrRange,
                ip_protocol: 0,
                start_port: 0,
                end_port: 65535,
                start_addr: &[10, 1, 0, 0],
                end_addr: &[10, 1, 0, 255],
            }]),
            Payload::Delete(Delete { protocol: ProtocolId::Esp, spi_size: 4, spis: vec![&[1, 2, 3, 4], &[5, 6, 7, 8]] }),
            Payload::Unknown { ty: PayloadType::Unknown(200), critical: true, body: b"x" },
        ]
    }

    #[test]
    fn round_trip_sample() {
        let m = Message { header: Header::new(1, 2, ExchangeType::IkeSaInit, flags::INITIATOR, 0), payloads: sample_payloads() };
        let bytes = m.emit();
        let p = Message::parse(&bytes).unwrap();
        assert_eq!(p.payloads, m.payloads);
        assert_eq!(p.header.length as usize, bytes.len());
        assert_eq!(p.emit(), bytes);
    }

    #[test]
    fn rejects_truncation_and_trailing() {
        let m = Message { header: Header::new(1, 2, ExchangeType::IkeSaInit, 0, 0), payloads: sample_payloads() };
        let bytes = m.emit();
        // Cut the datagram: header length no longer matches.
        assert!(matches!(Message::parse(&bytes[..bytes.len() - 1]), Err(ParseError::LengthMismatch { .. })));
        // Fix the header length but drop the last byte: the last payload overruns.
        let mut cut = bytes[..bytes.len() - 1].to_vec();
        let l = cut.len() as u32;
        cut[24..28].copy_from_slice(&l.to_be_bytes());
        assert!(Message::parse(&cut).is_err());
        // Extra byte after a chain that ends with next = 0.
        let mut extra = bytes.clone();
        extra.push(0);
        let l = extra.len() as u32;
        extra[24..28].copy_from_slice(&l.to_be_bytes());
        assert!(matches!(Message::parse(&extra), Err(ParseError::TrailingBytes { .. })));
        // Wrong major version.
        let mut v = bytes.clone();
        v[17] = 0x10;
        assert_eq!(Message::parse(&v), Err(ParseError::MajorVersion(1)));
    }

    #[test]
    fn sk_must_be_last() {
        let payloads = vec![Payload::Sk { first_inner: PayloadType::IdI, body: &[0; 40] }];
        let m = Message { header: Header::new(1, 2, ExchangeType::IkeAuth, 0, 1), payloads };
        let bytes = m.emit();
        let p = Message::parse(&bytes).unwrap();
        assert_eq!(p.payloads.len(), 1);
        assert_eq!(p.header.next_payload, PayloadType::Sk);
    }

    #[test]
    fn registry_keeps_unknown() {
        assert_eq!(NotifyType::from(16430), NotifyType::Ikev2FragmentationSupported);
        assert_eq!(NotifyType::from(40000), NotifyType::Unknown(40000));
        assert_eq!(NotifyType::Unknown(40000).value(), 40000);
        assert!(NotifyType::NoProposalChosen.is_error());
    }

    // Owned shadow of Payload for proptest generation.
    #[derive(Debug, Clone)]
    #[allow(clippy::type_complexity)]
    enum Gen {
        Sa(Vec<(u8, u8, Vec<u8>, Vec<(u8, u16, Option<u16>, Option<Vec<u8>>)>)>),
        Ke(u16, Vec<u8>),
        Id(bool, u8, Vec<u8>),
        Cert(bool, u8, Vec<u8>),
        Auth(u8, Vec<u8>),
        Nonce(Vec<u8>),
        Notify(u8, Vec<u8>, u16, Vec<u8>),
        Delete(u8, u8, usize, Vec<u8>),
        Vid(Vec<u8>),
        Ts(bool, Vec<(bool, u8, u16, u16, Vec<u8>)>),
        Unknown(u8, bool, Vec<u8>),
    }

    fn bytes(max: usize) -> impl Strategy<Value = Vec<u8>> {
        proptest::collection::vec(any::<u8>(), 0..max)
    }

    fn gen() -> impl Strategy<Value = Gen> {
        let transform = (1u8..6, any::<u16>(), proptest::option::of(any::<u16>()), proptest::option::of(bytes(6)));
        let proposal = (any::<u8>(), 1u8..4, bytes(8), proptest::collection::vec(transform, 0..5));
        prop_oneof![
            proptest::collection::vec(proposal, 1..4).prop_map(Gen::Sa),
            (any::<u16>(), bytes(64)).prop_map(|(g, d)| Gen::Ke(g, d)),
            (any::<bool>(), any::<u8>(), bytes(20)).prop_map(|(a, b, c)| Gen::Id(a, b, c)),
            (any::<bool>(), any::<u8>(), bytes(20)).prop_map(|(a, b, c)| Gen::Cert(a, b, c)),
            (any::<u8>(), bytes(40)).prop_map(|(a, b)| Gen::Auth(a, b)),
            bytes(64).prop_map(Gen::Nonce),
            (any::<u8>(), bytes(8), any::<u16>(), bytes(24)).prop_map(|(a, b, c, d)| Gen::Notify(a, b, c, d)),
            (1u8..4, 1u8..9, 0usize..5, bytes(64)).prop_map(|(a, b, c, d)| Gen::Delete(a, b, c, d)),
            bytes(16).prop_map(Gen::Vid),
            (any::<bool>(), proptest::collection::vec((any::<bool>(), any::<u8>(), any::<u16>(), any::<u16>(), proptest::collection::vec(any::<u8>(), 32..33)), 0..4))
                .prop_map(|(a, b)| Gen::Ts(a, b)),
            (prop_oneof![Just(47u8), 49u8..53, 54u8..=255], any::<bool>(), bytes(16)).prop_map(|(a, b, c)| Gen::Unknown(a, b, c)),
        ]
    }

    fn to_payload(g: &Gen) -> Payload<'_> {
        match g {
            Gen::Sa(props) => Payload::Sa(
                props
                    .iter()
                    .map(|(n, proto, spi, ts)| Proposal {
                        number: *n,
                        protocol: ProtocolId::from(*proto),
                        spi,
                        transforms: ts
                            .iter()
                            .map(|(ty, id, tv, tlv)| {
                                let mut attributes = Vec::new();
                                if let Some(v) = tv {
                                    attributes.push(Attribute { ty: AttributeType::KeyLength, value: AttrValue::Tv(*v) });
                                }
                                if let Some(d) = tlv {
                                    attributes.push(Attribute { ty: AttributeType::Unknown(99), value: AttrValue::Tlv(d) });
                                }
                                Transform { ty: TransformType::from(*ty), id: *id, attributes }
                            })
                            .collect(),
                    })
                    .collect(),
            ),
            Gen::Ke(g, d) => Payload::Ke { group: *g, data: d },
            Gen::Id(i, t, d) => {
                let id = Identification { ty: IdType::from(*t), data: d };
                if *i { Payload::IdI(id) } else { Payload::IdR(id) }
            }
            Gen::Cert(c, e, d) => {
                if *c { Payload::Cert { encoding: *e, data: d } } else { Payload::CertReq { encoding: *e, data: d } }
            }
            Gen::Auth(m, d) => Payload::Auth { method: AuthMethod::from(*m), data: d },
            Gen::Nonce(d) => Payload::Nonce(d),
            Gen::Notify(p, spi, t, d) => Payload::Notify(Notify { protocol: *p, spi, ty: NotifyType::from(*t), data: d }),
            Gen::Delete(p, size, n, d) => {
                let size = usize::from(*size);
                let n = (*n).min(d.len() / size);
                Payload::Delete(Delete { protocol: ProtocolId::from(*p), spi_size: size as u8, spis: d[..n * size].chunks(size).collect() })
            }
            Gen::Vid(d) => Payload::VendorId(d),
            Gen::Ts(i, sels) => {
                let s = sels
                    .iter()
                    .map(|(v6, proto, sp, ep, a)| {
                        let l = if *v6 { 16 } else { 4 };
                        Selector {
                            ty: if *v6 { TsType::Ipv6AddrRange } else { TsType::Ipv4AddrRange },
                            ip_protocol: *proto,
                            start_port: *sp,
                            end_port: *ep,
                            start_addr: &a[..l],
                            end_addr: &a[16..16 + l],
                        }
                    })
                    .collect();
                if *i { Payload::TsI(s) } else { Payload::TsR(s) }
            }
            Gen::Unknown(t, c, d) => Payload::Unknown { ty: PayloadType::from(*t), critical: *c, body: d },
        }
    }

    proptest! {
        #[test]
        fn emit_parse_round_trip(gs in proptest::collection::vec(gen(), 0..8), spi_i in any::<u64>(), mid in any::<u32>(), ex in any::<u8>(), fl in any::<u8>()) {
            let payloads: Vec<Payload<'_>> = gs.iter().map(to_payload).collect();
            let m = Message { header: Header::new(spi_i, 7, ExchangeType::from(ex), fl, mid), payloads };
            let bytes = m.emit();
            let p = Message::parse(&bytes).unwrap();
            prop_assert_eq!(&p.payloads, &m.payloads);
            prop_assert_eq!(p.emit(), bytes);
        }

        #[test]
        fn random_bytes_never_panic(data in proptest::collection::vec(any::<u8>(), 0..600)) {
            let _ = Message::parse(&data);
            let _ = parse_chain(PayloadType::from(data.first().copied().unwrap_or(33)), &data);
        }

        #[test]
        fn mutated_messages_never_panic(gs in proptest::collection::vec(gen(), 1..6), muts in proptest::collection::vec((any::<usize>(), any::<u8>()), 1..6), cut in any::<usize>()) {
            let payloads: Vec<Payload<'_>> = gs.iter().map(to_payload).collect();
            let m = Message { header: Header::new(1, 2, ExchangeType::IkeAuth, 0, 1), payloads };
            let mut bytes = m.emit();
            for (pos, val) in muts {
                let i = pos % bytes.len();
                bytes[i] = val;
            }
            if let Ok(p) = Message::parse(&bytes) {
                // Whatever parses must emit and re-parse to the same structure.
                let again = p.emit();
                let q = Message::parse(&again).unwrap();
                prop_assert_eq!(q.payloads, p.payloads);
            }
            let c = cut % (bytes.len() + 1);
            let _ = Message::parse(&bytes[..c]);
        }
    }
}
