//! Fuzzes `replay`'s capture reader (pcap and pcapng, any interfaces and
//! link types) and the frame parser behind it: never panics, never loops,
//! and an error says how many packets were read before it and holds no
//! control character (it becomes one line on stderr).
#![no_main]

use libfuzzer_sys::fuzz_target;
use tcpwatch::commands::capture::{Frames, Next};
use tcpwatch::source::pcap::parse;

fuzz_target!(|data: &[u8]| {
    let mut frames = match Frames::from_bytes(data) {
        Ok(frames) => frames,
        Err(e) => return check(&e.to_string()),
    };
    // Each record is at least 12 bytes: a bound on what a real reader may
    // return from this input.
    for _ in 0..=data.len() / 12 + 1 {
        match frames.read() {
            Ok(Next::Frame(frame)) => {
                let _ = parse(frame.link, &frame.data);
            }
            Ok(Next::Torn | Next::End) => return,
            Err(e) => return check(&e.to_string()),
        }
    }
    panic!("more packets than the input can hold");
});

fn check(error: &str) {
    assert!(!error.chars().any(char::is_control), "{error:?}");
    assert!(error.contains("packets)"), "{error}");
}
