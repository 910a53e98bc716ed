//! Fuzz target: xDS-lite decoding (`legate_xds::protocol`) must never panic, whatever bytes a
//! peer sends (R4), and whatever decodes must encode to one line that decodes again.
#![no_main]

use legate_xds::protocol::{LineDecoder, Message};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    // The input as one line.
    if let Ok(m) = Message::decode(data) {
        let line = m.encode();
        assert_eq!(line.iter().filter(|b| **b == b'\n').count(), 1);
        assert_eq!(line.last(), Some(&b'\n'));
        assert!(Message::decode(&line[..line.len() - 1]).is_ok());
    }
    // The input as a stream, delivered in two pieces.
    let mut decoder = LineDecoder::default();
    let (a, b) = data.split_at(data.len() / 2);
    decoder.push(a);
    while decoder.next_message().is_some() {}
    decoder.push(b);
    decoder.push(b"\n");
    while decoder.next_message().is_some() {}
});
