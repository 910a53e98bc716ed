//! Replays the fuzz seed corpus (`fuzz/corpus/xds_message/`) through the decoder: nothing
//! panics, the well-formed seeds decode, and every `broken-*` seed is an error (R4).

use std::path::Path;

use legate_xds::protocol::{LineDecoder, Message};

/// Every message of a stream, with its final line terminated.
fn decode_stream(data: &[u8]) -> Vec<Result<Message, String>> {
    let mut decoder = LineDecoder::default();
    decoder.push(data);
    decoder.push(b"\n");
    let mut out = Vec::new();
    while let Some(m) = decoder.next_message() {
        out.push(m.map_err(|e| e.to_string()));
    }
    out
}

#[test]
fn seed_corpus_decodes_without_panics() {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../fuzz/corpus/xds_message");
    let mut seeds = 0;
    for entry in std::fs::read_dir(&dir).expect("corpus directory") {
        let path = entry.expect("corpus entry").path();
        let name = path
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_default();
        let data = std::fs::read(&path).expect("corpus file");
        seeds += 1;

        // The whole file as one line, as the fuzz target does first.
        if let Ok(m) = Message::decode(&data) {
            let line = m.encode();
            assert!(Message::decode(&line[..line.len() - 1]).is_ok(), "{name}");
        }
        // Every split point, as a stream.
        for cut in 0..=data.len() {
            let mut decoder = LineDecoder::default();
            decoder.push(&data[..cut]);
            while decoder.next_message().is_some() {}
            decoder.push(&data[cut..]);
            while decoder.next_message().is_some() {}
        }

        let messages = decode_stream(&data);
        if name.starts_with("broken-") {
            assert!(
                messages.iter().any(Result::is_err),
                "{name} should not decode: {messages:?}"
            );
        } else {
            assert!(!messages.is_empty(), "{name} holds no message");
            for m in &messages {
                let m = m.as_ref().map_err(|e| format!("{name}: {e}"));
                assert!(m.is_ok(), "{m:?}");
            }
        }
    }
    assert!(seeds >= 10, "only {seeds} seeds in {}", dir.display());
}
