//! CSTP framing (anyconnect.md §3): an 8-byte header `'S' 'T' 'F' 0x01 | len u16 BE | type |
//! 0x00` then `len` payload bytes, carried on the TLS byte stream with no alignment to TLS
//! records. The DTLS channel uses the same type values as a 1-byte prefix of each record.

use std::fmt;

/// Header length of a CSTP frame.
pub const HEADER_LEN: usize = 8;
/// The fixed magic + version at the start of every frame.
pub const MAGIC: [u8; 4] = *b"STF\x01";
/// Largest payload the decoder accepts. A TLS record carries at most 16 KiB of plaintext and
/// clients put one IP packet per frame, so anything larger is garbage or an attack; this also
/// bounds the reassembly buffer.
pub const MAX_PAYLOAD: usize = 16 * 1024;

/// CSTP/DTLS packet types, in the draft's table order; unknown values are kept.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum FrameType {
    Data,
    DpdReq,
    DpdResp,
    Disconnect,
    Keepalive,
    Compressed,
    Terminate,
    Unknown(u8),
}

impl FrameType {
    pub fn from_u8(v: u8) -> Self {
        match v {
            0x00 => Self::Data,
            0x03 => Self::DpdReq,
            0x04 => Self::DpdResp,
            0x05 => Self::Disconnect,
            0x07 => Self::Keepalive,
            0x08 => Self::Compressed,
            0x09 => Self::Terminate,
            o => Self::Unknown(o),
        }
    }

    pub fn to_u8(self) -> u8 {
        match self {
            Self::Data => 0x00,
            Self::DpdReq => 0x03,
            Self::DpdResp => 0x04,
            Self::Disconnect => 0x05,
            Self::Keepalive => 0x07,
            Self::Compressed => 0x08,
            Self::Terminate => 0x09,
            Self::Unknown(v) => v,
        }
    }
}

/// DISCONNECT payload byte meaning "the user logged out" (anything else: the client intends
/// to reconnect).
pub const DISCONNECT_LOGOUT: u8 = 0xb0;

/// Malformed CSTP: the stream cannot be resynchronised after any of these.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum CstpError {
    #[error("bad frame magic {0:02x?}")]
    BadMagic([u8; 4]),
    #[error("frame length {0} exceeds {MAX_PAYLOAD}")]
    Oversize(usize),
    #[error("non-zero reserved header byte {0:#04x}")]
    BadReserved(u8),
}

/// A decoded frame; `payload` borrows either the caller's input or the decoder's reassembly
/// buffer (only for a frame that straddled two inputs).
#[derive(Clone, Copy, PartialEq, Eq)]
pub struct Frame<'a> {
    pub ty: FrameType,
    pub payload: &'a [u8],
}

impl fmt::Debug for Frame<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Frame({:?}, {} bytes)", self.ty, self.payload.len())
    }
}

/// Parses one header; `Ok(None)` if fewer than 8 bytes.
pub fn parse_header(b: &[u8]) -> Result<Option<(FrameType, usize)>, CstpError> {
    let Some(h) = b.get(..HEADER_LEN) else {
        // Reject a wrong magic as early as the bytes allow, so garbage fails fast.
        let n = b.len().min(4);
        if b[..n] != MAGIC[..n] {
            let mut m = [0u8; 4];
            m[..n].copy_from_slice(&b[..n]);
            return Err(CstpError::BadMagic(m));
        }
        return Ok(None);
    };
    let magic = [h[0], h[1], h[2], h[3]];
    if magic != MAGIC {
        return Err(CstpError::BadMagic(magic));
    }
    let len = usize::from(u16::from_be_bytes([h[4], h[5]]));
    if len > MAX_PAYLOAD {
        return Err(CstpError::Oversize(len));
    }
    if h[7] != 0 {
        return Err(CstpError::BadReserved(h[7]));
    }
    Ok(Some((FrameType::from_u8(h[6]), len)))
}

/// Writes a header for a `len`-byte payload of type `ty` into `out[..8]`.
pub fn write_header(out: &mut [u8; HEADER_LEN], ty: FrameType, len: u16) {
    out[..4].copy_from_slice(&MAGIC);
    out[4..6].copy_from_slice(&len.to_be_bytes());
    out[6] = ty.to_u8();
    out[7] = 0;
}

/// Appends a whole frame to `out` (the engine's transmit buffer: no allocation once it has
/// grown to its working size).
pub fn encode_into(out: &mut Vec<u8>, ty: FrameType, payload: &[u8]) {
    let mut h = [0u8; HEADER_LEN];
    // Callers never pass more than MAX_PAYLOAD; saturate rather than wrap if one did.
    write_header(&mut h, ty, u16::try_from(payload.len()).unwrap_or(u16::MAX));
    out.extend_from_slice(&h);
    out.extend_from_slice(payload);
}

/// A streaming decoder over the TLS plaintext stream. Complete frames inside one input are
/// returned as views into that input (zero copy); only a frame cut by the end of an input is
/// copied into a bounded reassembly buffer (at most 8 + [`MAX_PAYLOAD`] bytes).
#[derive(Debug, Default, Clone)]
pub struct CstpDecoder {
    partial: Vec<u8>,
    failed: Option<CstpError>,
}

impl CstpDecoder {
    pub fn new() -> Self {
        Self::default()
    }

    /// Bytes held from an incomplete frame.
    pub fn buffered(&self) -> usize {
        self.partial.len()
    }

    /// Feeds `input` and calls `on_frame` for every complete frame, in order. After an error
    /// the decoder stays failed (the stream is desynchronised) and returns that error again.
    pub fn feed<F>(&mut self, mut input: &[u8], mut on_frame: F) -> Result<(), CstpError>
    where
        F: FnMut(Frame<'_>),
    {
        if let Some(e) = self.failed {
            return Err(e);
        }
        let r = self.feed_inner(&mut input, &mut on_frame);
        if let Err(e) = r {
            self.failed = Some(e);
            self.partial = Vec::new();
        }
        r
    }

    fn feed_inner<F>(&mut self, input: &mut &[u8], on_frame: &mut F) -> Result<(), CstpError>
    where
        F: FnMut(Frame<'_>),
    {
        // 1. Complete a straddling frame first.
        if !self.partial.is_empty() {
            if self.partial.len() < HEADER_LEN {
                let need = HEADER_LEN - self.partial.len();
                let take = need.min(input.len());
                self.partial.extend_from_slice(&input[..take]);
                *input = &input[take..];
                // Validate what we have so far (fails fast on garbage).
                if parse_header(&self.partial)?.is_none() {
                    return Ok(());
                }
            }
            let Some((ty, len)) = parse_header(&self.partial)? else {
                return Ok(());
            };
            let need = HEADER_LEN + len - self.partial.len();
            let take = need.min(input.len());
            self.partial.extend_from_slice(&input[..take]);
            *input = &input[take..];
            if self.partial.len() < HEADER_LEN + len {
                return Ok(());
            }
            on_frame(Frame {
                ty,
                payload: &self.partial[HEADER_LEN..],
            });
            self.partial.clear();
        }
        // 2. Whole frames straight out of the input.
        loop {
            match parse_header(input)? {
                Some((ty, len)) if input.len() >= HEADER_LEN + len => {
                    on_frame(Frame {
                        ty,
                        payload: &input[HEADER_LEN..HEADER_LEN + len],
                    });
                    *input = &input[HEADER_LEN + len..];
                }
                _ => {
                    // Incomplete header or payload: keep it for the next input.
                    if !input.is_empty() {
                        if self.partial.capacity() == 0 {
                            self.partial.reserve(HEADER_LEN + MAX_PAYLOAD);
                        }
                        self.partial.extend_from_slice(input);
                        *input = &[];
                    }
                    return Ok(());
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn frames(stream: &[u8], cuts: &[usize]) -> Result<Vec<(FrameType, Vec<u8>)>, CstpError> {
        let mut d = CstpDecoder::new();
        let mut out = Vec::new();
        let mut at = 0;
        let mut cuts: Vec<usize> = cuts.iter().map(|c| c % (stream.len() + 1)).collect();
        cuts.sort_unstable();
        for c in cuts.into_iter().chain(std::iter::once(stream.len())) {
            d.feed(&stream[at..c], |f| out.push((f.ty, f.payload.to_vec())))?;
            at = c;
        }
        assert_eq!(d.buffered(), 0, "whole frames leave nothing buffered");
        Ok(out)
    }

    #[test]
    fn header_golden() {
        let mut v = Vec::new();
        encode_into(&mut v, FrameType::DpdReq, b"ab");
        assert_eq!(v, b"STF\x01\x00\x02\x03\x00ab");
    }

    #[test]
    fn bad_magic_fails_fast_and_sticks() {
        let mut d = CstpDecoder::new();
        assert_eq!(d.feed(b"GET", |_| {}), Err(CstpError::BadMagic(*b"GET\0")));
        assert!(d
            .feed(b"STF\x01\x00\x00\x07\x00", |_| panic!(
                "no frame after failure"
            ))
            .is_err());
    }

    #[test]
    fn oversize_and_reserved() {
        let mut d = CstpDecoder::new();
        assert_eq!(
            d.feed(b"STF\x01\x40\x01\x00\x00", |_| {}),
            Err(CstpError::Oversize(0x4001))
        );
        let mut d = CstpDecoder::new();
        assert_eq!(
            d.feed(b"STF\x01\x00\x00\x07\x01", |_| {}),
            Err(CstpError::BadReserved(1))
        );
    }

    #[test]
    fn truncated_frame_waits() {
        let mut d = CstpDecoder::new();
        let mut n = 0;
        d.feed(b"STF\x01\x00\x04\x00\x00ab", |_| n += 1).unwrap();
        assert_eq!((n, d.buffered()), (0, 10));
        d.feed(b"cd", |f| {
            assert_eq!(f.payload, b"abcd");
            n += 1
        })
        .unwrap();
        assert_eq!((n, d.buffered()), (1, 0));
    }

    fn arb_frame() -> impl Strategy<Value = (u8, Vec<u8>)> {
        (
            prop::sample::select(vec![0u8, 3, 4, 5, 7, 9, 0x42]),
            prop::collection::vec(any::<u8>(), 0..1600),
        )
    }

    proptest! {
        /// Any split of a valid stream into inputs yields the same frames.
        #[test]
        fn arbitrary_splits(fs in prop::collection::vec(arb_frame(), 0..12),
                            cuts in prop::collection::vec(any::<usize>(), 0..20)) {
            let mut stream = Vec::new();
            for (t, p) in &fs {
                encode_into(&mut stream, FrameType::from_u8(*t), p);
            }
            let got = frames(&stream, &cuts).unwrap();
            let want: Vec<(FrameType, Vec<u8>)> =
                fs.iter().map(|(t, p)| (FrameType::from_u8(*t), p.clone())).collect();
            prop_assert_eq!(got, want);
        }

        /// Garbage never panics, and never yields more bytes than it was given.
        #[test]
        fn garbage_is_safe(data in prop::collection::vec(any::<u8>(), 0..3000),
                           cuts in prop::collection::vec(any::<usize>(), 0..8)) {
            let mut d = CstpDecoder::new();
            let mut total = 0usize;
            let mut at = 0;
            let mut cuts: Vec<usize> = cuts.iter().map(|c| c % (data.len() + 1)).collect();
            cuts.sort_unstable();
            for c in cuts.into_iter().chain(std::iter::once(data.len())) {
                let _ = d.feed(&data[at..c], |f| total += f.payload.len() + HEADER_LEN);
                at = c;
            }
            prop_assert!(total <= data.len());
            prop_assert!(d.buffered() <= HEADER_LEN + MAX_PAYLOAD);
        }
    }
}
