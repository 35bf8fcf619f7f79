//! Fuzzes everything a fleet node reads from Redis (`fleet::wire`): the
//! ban and unblock messages of the change log and ban keys, the (host, port)
//! members of the scan windows, and the replies of XREAD, the ban index
//! pages, the observe and sync scripts (the input is also read as RESP).
//!
//! Besides "never panics", `wire::exercise` checks that whatever a decoder
//! accepts writes back to the same bytes, that summaries are never larger
//! than what they summarise, and that every refusal is one printable line.
#![no_main]

use libfuzzer_sys::fuzz_target;
use tcpwatch::fleet::wire;

fuzz_target!(|data: &[u8]| {
    wire::exercise(data);
});
