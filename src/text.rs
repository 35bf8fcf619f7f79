//! Text helpers for what goes into one-line messages: outside text made
//! printable, error chains folded onto one line; socket addresses appended
//! to a byte buffer without the formatting machinery.

use std::net::SocketAddr;

/// Outside text (a value, a key) as it goes into a one-line error: control
/// characters escaped (`\n`, `\u{1b}`), so a newline or a terminal escape
/// sequence in a config value cannot break the line or the terminal.
pub fn printable(text: &str) -> String {
    text.chars()
        .map(|c| {
            if c.is_control() {
                c.escape_default().to_string()
            } else {
                c.to_string()
            }
        })
        .collect()
}

/// An error and its causes as `{e:#}` prints them (`outer: inner`), with
/// any line break inside a cause folded into a space.
pub fn chain(error: &anyhow::Error) -> String {
    format!("{error:#}").replace('\n', " ")
}

/// An error chain on one line, each cause once and only the first line of
/// each (a verifier log has hundreds): some errors repeat their source in
/// their own text.
pub fn one_line(error: &dyn std::error::Error) -> String {
    let mut parts = vec![error.to_string()];
    let mut source = error.source();
    while let Some(e) = source {
        parts.push(e.to_string());
        source = e.source();
    }
    let mut line = String::new();
    for part in &parts {
        let part = part.lines().next().unwrap_or("").trim();
        if part.is_empty() || line.contains(part) {
            continue;
        }
        if !line.is_empty() {
            line.push_str(": ");
        }
        line.push_str(part);
    }
    line
}

/// Appends `addr` as its `Display` writes it (`10.0.0.5:80`,
/// `[2001:db8::1]:443`), without the formatting machinery for IPv4: a
/// listing of tens of thousands of rows spends most of its own time there.
pub fn push_socket_addr(out: &mut Vec<u8>, addr: SocketAddr) {
    match addr {
        SocketAddr::V4(v4) => {
            // At most `255.255.255.255:65535`, written in place, then copied
            // at once.
            let mut text = [0u8; 21];
            let [a, b, c, d] = v4.ip().octets();
            let mut at = decimal(&mut text, a.into());
            for octet in [b, c, d] {
                text[at] = b'.';
                at += 1 + decimal(&mut text[at + 1..], octet.into());
            }
            text[at] = b':';
            at += 1 + decimal(&mut text[at + 1..], v4.port());
            out.extend_from_slice(&text[..at]);
        }
        SocketAddr::V6(v6) => {
            use std::io::Write;
            // Writing to a Vec cannot fail.
            let _ = write!(out, "{v6}");
        }
    }
}

/// Writes `n` in decimal at the start of `text`; returns its length.
fn decimal(text: &mut [u8], n: u16) -> usize {
    let len = match n {
        0..=9 => 1,
        10..=99 => 2,
        100..=999 => 3,
        1000..=9999 => 4,
        _ => 5,
    };
    let mut n = n;
    for digit in text[..len].iter_mut().rev() {
        *digit = b'0' + (n % 10) as u8;
        n /= 10;
    }
    len
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn socket_addresses_are_appended_as_display_writes_them() {
        let mut samples: Vec<SocketAddr> = [
            "0.0.0.0:0",
            "10.0.0.5:80",
            "192.168.100.200:65535",
            "255.255.255.255:9",
            "[::]:0",
            "[2001:db8::1]:443",
            "[::ffff:10.0.0.7]:8080",
            "[fe80::1%3]:22",
        ]
        .iter()
        .map(|a| a.parse().unwrap())
        .collect();
        for n in [0u16, 1, 9, 10, 99, 100, 255, 1000, 9999, 10000, 65535] {
            let byte = (n % 256) as u8;
            samples.push(SocketAddr::from(([byte, 10, byte / 3, 200], n)));
        }
        for addr in samples {
            let mut out = b"x ".to_vec();
            push_socket_addr(&mut out, addr);
            assert_eq!(String::from_utf8(out).unwrap(), format!("x {addr}"));
        }
    }

    #[test]
    fn error_chains_become_one_line_without_repeats() {
        let e = anyhow::anyhow!("verifier rejected\nline 2")
            .context("cannot load: verifier rejected")
            .context("loader");
        assert_eq!(
            one_line(e.as_ref()),
            "loader: cannot load: verifier rejected"
        );
    }

    #[test]
    fn chain_folds_line_breaks() {
        let e = anyhow::anyhow!("inner\nsecond line").context("outer");
        assert_eq!(chain(&e), "outer: inner second line");
    }

    #[test]
    fn control_characters_are_escaped() {
        assert_eq!(printable("a\nb\u{1b}[2K"), "a\\nb\\u{1b}[2K");
        assert_eq!(printable("plain"), "plain");
    }
}
