//! Fuzzes the control socket's parsers: a request as the agent reads it
//! from a local client, an answer as `tcpwatch status` and `tcpwatch
//! blocks` read it from the agent.
//!
//! Besides "never panics", it checks:
//!
//! - an accepted request or answer writes back (`to_line`) as one line
//!   that parses to the same value;
//! - errors are one line without control characters;
//! - input longer than the limit is refused, never read.
#![no_main]

use libfuzzer_sys::fuzz_target;
use tcpwatch::control::{parse_request, parse_response, to_line, MAX_REQUEST};

fuzz_target!(|data: &[u8]| {
    match parse_request(data) {
        Ok(request) => {
            assert!(data.len() <= MAX_REQUEST);
            let line = to_line(&request);
            assert_eq!(line.matches('\n').count(), 1, "{line:?}");
            assert_eq!(parse_request(line.as_bytes()), Ok(request));
        }
        Err(e) => assert!(!e.chars().any(char::is_control), "{e:?}"),
    }
    match parse_response(data) {
        Ok(response) => {
            let line = to_line(&response);
            assert_eq!(line.matches('\n').count(), 1, "{line:?}");
            assert_eq!(parse_response(line.as_bytes()), Ok(response));
        }
        Err(e) => assert!(!e.chars().any(char::is_control), "{e:?}"),
    }
});
