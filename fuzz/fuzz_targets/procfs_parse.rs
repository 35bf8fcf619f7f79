//! Fuzzes the `/proc/net/tcp{,6}` parser.
//!
//! Arbitrary bytes (UTF-8 where valid, lossily converted otherwise) go to
//! `parse_table`, and each line to `parse_line`. Besides "never panics", it
//! checks:
//!
//! - `parse_table` agrees with `parse_line`: on success it returns exactly
//!   the sockets of the lines `parse_line` accepts, in order, minus a torn
//!   (unterminated) last line; on failure the line it names exists, is not
//!   the torn one, and `parse_line` rejects it for the same reason;
//! - every socket `parse_line` accepts, written back in the kernel's format,
//!   parses to the same socket, alone and inside a table;
//! - error messages stay one line without control characters;
//! - `sockstat_field` (the `/proc/net/sockstat{,6}` counts) never panics
//!   and finds only a number written on its protocol's line.
#![no_main]

use libfuzzer_sys::fuzz_target;
use std::net::{IpAddr, SocketAddr};
use tcpwatch::source::procfs::{parse_line, parse_table, sockstat_field};
use tcpwatch::event::{Socket, TcpState};

const HEADER4: &str = "  sl  local_address rem_address   st tx_queue rx_queue tr tm->when retrnsmt   uid  timeout inode";
const HEADER6: &str = "  sl  local_address                         remote_address                        st tx_queue rx_queue tr tm->when retrnsmt   uid  timeout inode";

fuzz_target!(|data: &[u8]| {
    let text = String::from_utf8_lossy(data);
    check(&text);
    check_sockstat(&text);
});

fn check_sockstat(text: &str) {
    for (proto, field) in [("TCP:", "tw"), ("TCP6:", "inuse"), ("TCP:", "inuse")] {
        if let Some(n) = sockstat_field(text, proto, field) {
            let line = text
                .lines()
                .find(|l| l.split_ascii_whitespace().next() == Some(proto))
                .expect("a value comes from its protocol's line");
            assert!(line.contains(&n.to_string()), "{n} not on {line:?}");
        }
    }
}

fn check(text: &str) {
    let lines: Vec<&str> = text.lines().collect();
    let torn_index = (!text.ends_with('\n') && !lines.is_empty()).then(|| lines.len() - 1);
    let per_line: Vec<Result<Socket, String>> = lines.iter().map(|l| parse_line(l)).collect();

    for result in &per_line {
        match result {
            Ok(socket) => check_round_trip(socket),
            Err(reason) => check_message(reason),
        }
    }

    match parse_table(text) {
        Ok(sockets) => {
            let expected: Vec<Socket> = per_line
                .iter()
                .enumerate()
                .filter(|(i, _)| Some(*i) != torn_index)
                .filter_map(|(_, r)| r.as_ref().ok().copied())
                .collect();
            assert_eq!(sockets, expected, "parse_table disagrees with parse_line");
        }
        Err(e) => {
            check_message(&e.reason);
            assert!(
                e.line >= 1 && e.line <= lines.len(),
                "error names line {} of {}",
                e.line,
                lines.len()
            );
            assert_ne!(Some(e.line - 1), torn_index, "torn last line reported");
            assert_eq!(
                per_line[e.line - 1].as_ref().err(),
                Some(&e.reason),
                "parse_table's error is not parse_line's"
            );
        }
    }
}

fn check_message(reason: &str) {
    assert!(
        !reason.chars().any(char::is_control),
        "control character in error {reason:?}"
    );
    assert!(reason.len() < 600, "overlong error {reason:?}");
}

/// Writes the socket back as the kernel would and parses it again.
fn check_round_trip(socket: &Socket) {
    let v4 = socket.local.is_ipv4() && socket.remote.is_ipv4();
    let row = format!(
        "{:4}: {} {} {:02X} 00000000:00000000 00:00000000 00000000  1000        0 {} 1 0000000000000000 20 4 30 10 -1",
        7,
        endpoint(socket.local, v4),
        endpoint(socket.remote, v4),
        kernel_state(socket.state),
        socket.inode
    );
    assert_eq!(parse_line(&row).as_ref(), Ok(socket), "row {row:?}");
    let table = if v4 {
        format!("{HEADER4:<149}\n{row:<149}\n")
    } else {
        format!("{HEADER6}\n{row}\n")
    };
    assert_eq!(
        parse_table(&table).as_deref(),
        Ok(&[*socket][..]),
        "{table:?}"
    );
}

/// `ADDR:PORT` as the kernel prints it: each big-endian 32-bit word of the
/// address as a host-order `%08X`. In a tcp6 row an IPv4 address is the
/// mapped `::ffff:a.b.c.d`.
fn endpoint(addr: SocketAddr, v4_row: bool) -> String {
    let octets: Vec<u8> = match addr.ip() {
        IpAddr::V4(ip) if v4_row => ip.octets().to_vec(),
        IpAddr::V4(ip) => ip.to_ipv6_mapped().octets().to_vec(),
        IpAddr::V6(ip) => ip.octets().to_vec(),
    };
    let mut out = String::new();
    for word in octets.chunks_exact(4) {
        let value = u32::from_ne_bytes(word.try_into().unwrap());
        out.push_str(&format!("{value:08X}"));
    }
    format!("{out}:{:04X}", addr.port())
}

fn kernel_state(state: TcpState) -> u8 {
    (0..=u8::MAX)
        .find(|&n| TcpState::from_kernel(n) == Some(state))
        .expect("every state has a kernel number")
}
