//! IKEv2 message parser: arbitrary bytes must never panic, and whatever parses must re-emit
//! to bytes that parse to the same payloads (RFC 7296 §3 codec consistency).
#![no_main]

use libfuzzer_sys::fuzz_target;
use wire::ike::{parse_chain, Message, PayloadType};

fuzz_target!(|data: &[u8]| {
    if let Ok(m) = Message::parse(data) {
        let again = m.emit();
        let m2 = Message::parse(&again).expect("re-emitted message parses");
        assert_eq!(m.payloads, m2.payloads);
    }
    // The inner chain of an SK payload, as the engine parses it after decryption.
    if let Some((&first, rest)) = data.split_first() {
        let _ = parse_chain(PayloadType::from(first), rest);
    }
});
