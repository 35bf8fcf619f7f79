//! Reading what the agent did to the machine: firewall sets, metrics,
//! process status.

use crate::lab::{Lab, A};
use std::collections::HashMap;
use std::net::IpAddr;

/// `nft list set inet tcpwatch SET` in host A, which must succeed.
pub fn nft_set(lab: &Lab, set: &str) -> String {
    nft_set_in(lab, A, set)
}

/// `nft list set inet tcpwatch SET` in host `index`, which must succeed.
pub fn nft_set_in(lab: &Lab, index: usize, set: &str) -> String {
    lab.output(index, "nft", &["list", "set", "inet", "tcpwatch", set])
}

/// Whether a firewall listing `text` holds `ip` as an element (a whole
/// word, not part of another address).
pub fn lists(text: &str, ip: IpAddr) -> bool {
    let ip = ip.to_string();
    text.split(|c: char| !(c.is_ascii_hexdigit() || c == '.' || c == ':'))
        .any(|word| word == ip)
}

/// The value of the sample `series` (`name` or `name{labels}`, exactly) in
/// a metrics text exposition.
pub fn sample(text: &str, series: &str) -> Option<f64> {
    text.lines().find_map(|l| {
        l.strip_prefix(series)?
            .strip_prefix(' ')?
            .trim()
            .parse()
            .ok()
    })
}

/// The `Name:` fields of /proc/PID/status, values whitespace-joined.
pub fn proc_status(pid: u32) -> HashMap<String, String> {
    let text = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    status_fields(&text)
}

/// The `Name: value` fields of a /proc/PID/status text.
pub fn status_fields(text: &str) -> HashMap<String, String> {
    text.lines()
        .filter_map(|l| l.split_once(':'))
        .map(|(k, v)| {
            let words: Vec<&str> = v.split_whitespace().collect();
            (k.to_string(), words.join(" "))
        })
        .collect()
}
