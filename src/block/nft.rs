//! The nftables backend: table `inet tcpwatch`, sets `blocked4`/`blocked6`
//! with kernel-side timeouts, and one chain at prerouting/raw priority that
//! drops their sources (so containers behind the host are covered too, and
//! each packet costs one set lookup, never one rule per address).
//!
//! Every change is one `nft -f -` batch, which the kernel applies as one
//! transaction. nft 1.0.6 has no `destroy`: adding an existing element
//! succeeds and deleting an absent one fails, so idempotent scripts are
//! built from `add; delete; add` (docs/blocking.md).

use super::backend::{by_whole_seconds, Backend, Entry, Family};
use super::exec;
use crate::event::show_net;
use crate::os::nftables as libnft;
use anyhow::Context;
use ipnet::IpNet;
use std::fmt::Write;
use std::net::IpAddr;
use std::time::Duration;

pub const TABLE: &str = "inet tcpwatch";
pub const SET4: &str = "blocked4";
pub const SET6: &str = "blocked6";
/// Addresses per `add element` statement: keeps each line of a large batch
/// reasonable; the batch stays one transaction whatever its size.
const CHUNK: usize = 1000;

pub struct Nftables;

impl Backend for Nftables {
    fn name(&self) -> &'static str {
        "nftables"
    }

    fn install(&mut self, _ttl: Duration) -> anyhow::Result<()> {
        nft(&install_script()).context("cannot create table inet tcpwatch")
    }

    fn block(&mut self, targets: &[IpNet], ttl: Duration) -> anyhow::Result<()> {
        nft(&block_script(targets, ttl))
    }

    fn unblock(&mut self, target: IpNet) -> anyhow::Result<()> {
        nft(&unblock_script(target))
    }

    fn list(&mut self) -> anyhow::Result<Vec<Entry>> {
        // The whole table in one call: the elements, and a check that
        // nothing was deleted under the agent.
        let json = nft_output(&format!("list table {TABLE}"), true)?;
        check_complete(&json)?;
        parse_list(&json)
    }

    fn flush(&mut self) -> anyhow::Result<()> {
        nft(&format!(
            "flush set {TABLE} {SET4}\nflush set {TABLE} {SET6}\n"
        ))
    }

    fn remove(&mut self) -> anyhow::Result<()> {
        nft(&remove_script())
    }

    fn present(&mut self) -> bool {
        nft_output(&format!("list table {TABLE}"), false).is_ok()
    }

    fn restore(&mut self, entries: &[(IpNet, Duration)]) -> anyhow::Result<()> {
        // One script, so the kernel applies every restored block in one
        // transaction.
        let script: String = by_whole_seconds(entries)
            .iter()
            .map(|(ttl, ips)| block_script(ips, *ttl))
            .collect();
        nft(&script)
    }

    fn repair(&mut self, _ttl: Duration, entries: &[(IpNet, Duration)]) -> anyhow::Result<bool> {
        // One transaction: the table is never there without its blocks, and
        // a table that was still there (read failed for another reason) is
        // replaced by the same content.
        let mut script = install_script();
        for (ttl, ips) in by_whole_seconds(entries) {
            script.push_str(&block_script(&ips, ttl));
        }
        nft(&script)
            .context("cannot re-create table inet tcpwatch")
            .map(|()| true)
    }
}

fn nft(script: &str) -> anyhow::Result<()> {
    nft_output(script, false).map(|_| ())
}

/// In-process through libnftables when it loads (0.1 ms), else the `nft`
/// binary (a process per call, about 16 ms).
fn nft_output(script: &str, json: bool) -> anyhow::Result<String> {
    if let Some(result) = libnft::run(script, json) {
        return result;
    }
    if json {
        // nft 1.0.6 prints nothing for `-j -f -` (a listing read from a
        // file): a one-line command goes as arguments.
        let mut args = vec!["-j"];
        args.extend(script.split_whitespace());
        return exec::run("nft", &args, None);
    }
    exec::run("nft", &["-f", "-"], Some(script))
}

/// Creates the table, replacing one left by a crashed run, in one batch:
/// afterwards there is exactly one table with one rule per family.
pub fn install_script() -> String {
    format!(
        "add table {TABLE}\n\
         delete table {TABLE}\n\
         add table {TABLE}\n\
         add set {TABLE} {SET4} {{ type ipv4_addr; flags timeout; }}\n\
         add set {TABLE} {SET6} {{ type ipv6_addr; flags timeout; }}\n\
         add chain {TABLE} prerouting {{ type filter hook prerouting priority raw; policy accept; }}\n\
         add rule {TABLE} prerouting ip saddr @{SET4} drop\n\
         add rule {TABLE} prerouting ip6 saddr @{SET6} drop\n"
    )
}

/// Removes the table whether or not it exists.
pub fn remove_script() -> String {
    format!("add table {TABLE}\ndelete table {TABLE}\n")
}

/// Blocks every address for `ttl` in one transaction. `add; delete; add`
/// makes it idempotent and resets the timeout of an address already there.
pub fn block_script(targets: &[IpNet], ttl: Duration) -> String {
    let timeout = nft_time(ttl);
    let mut script = String::new();
    for (set, family) in [(SET4, Family::V4), (SET6, Family::V6)] {
        let ips: Vec<IpNet> = targets
            .iter()
            .copied()
            .filter(|t| Family::of_net(t) == family)
            .collect();
        for chunk in ips.chunks(CHUNK) {
            let plain = join(chunk, "");
            let timed = join(chunk, &format!(" timeout {timeout}"));
            // Writing to a String cannot fail.
            let _ = write!(
                script,
                "add element {TABLE} {set} {{ {plain} }}\n\
                 delete element {TABLE} {set} {{ {plain} }}\n\
                 add element {TABLE} {set} {{ {timed} }}\n"
            );
        }
    }
    script
}

/// Lifts a block whether or not it is there.
pub fn unblock_script(target: IpNet) -> String {
    let set = match Family::of_net(&target) {
        Family::V4 => SET4,
        Family::V6 => SET6,
    };
    let ip = show_net(&target);
    format!("add element {TABLE} {set} {{ {ip} }}\ndelete element {TABLE} {set} {{ {ip} }}\n")
}

fn join(targets: &[IpNet], suffix: &str) -> String {
    let items: Vec<String> = targets
        .iter()
        .map(|t| format!("{}{suffix}", show_net(t)))
        .collect();
    items.join(", ")
}

/// nft's time syntax: whole seconds as `30s`, anything finer in `ms`.
fn nft_time(d: Duration) -> String {
    let ms = d.as_millis();
    if ms.is_multiple_of(1000) {
        format!("{}s", ms / 1000)
    } else {
        format!("{ms}ms")
    }
}

/// Checks that `nft -j list table inet tcpwatch` shows both sets, the chain
/// and its two rules: a part deleted by hand (a flushed chain, a deleted
/// set) is an error, which the agent repairs.
pub fn check_complete(json: &str) -> anyhow::Result<()> {
    let doc: serde_json::Value =
        serde_json::from_str(json).context("nft -j printed something that is not JSON")?;
    let objects = doc["nftables"].as_array().map(Vec::as_slice).unwrap_or(&[]);
    let named = |kind: &str, name: &str| {
        objects
            .iter()
            .any(|o| o.get(kind).is_some_and(|v| v["name"] == name))
    };
    let rules = objects.iter().filter(|o| o.get("rule").is_some()).count();
    let mut missing = Vec::new();
    for set in [SET4, SET6] {
        if !named("set", set) {
            missing.push(format!("set {set}"));
        }
    }
    if !named("chain", "prerouting") {
        missing.push("chain prerouting".to_string());
    } else if rules < 2 {
        missing.push("rules of chain prerouting".to_string());
    }
    if missing.is_empty() {
        Ok(())
    } else {
        anyhow::bail!(
            "table {TABLE} is incomplete ({} missing)",
            missing.join(", ")
        )
    }
}

/// Reads the elements of `nft -j list set ...` (or `list table`): `{"elem": {"val": ip,
/// "timeout": s, "expires": s}}`, or a bare address for an element added
/// without a timeout.
pub fn parse_list(json: &str) -> anyhow::Result<Vec<Entry>> {
    let doc: serde_json::Value =
        serde_json::from_str(json).context("nft -j printed something that is not JSON")?;
    let mut entries = Vec::new();
    let objects = doc["nftables"].as_array().map(Vec::as_slice).unwrap_or(&[]);
    for set in objects.iter().filter_map(|o| o.get("set")) {
        for elem in set["elem"].as_array().map(Vec::as_slice).unwrap_or(&[]) {
            let (val, expires) = match elem.get("elem") {
                Some(inner) => (&inner["val"], inner["expires"].as_u64()),
                None => (elem, None),
            };
            let Some(ip) = val.as_str().and_then(|s| s.parse::<IpAddr>().ok()) else {
                continue;
            };
            entries.push(Entry::new(
                IpNet::from(ip),
                expires.map(Duration::from_secs),
            ));
        }
    }
    Ok(entries)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ips(list: &[&str]) -> Vec<IpNet> {
        list.iter()
            .map(|s| IpNet::from(s.parse::<IpAddr>().unwrap()))
            .collect()
    }

    #[test]
    fn one_batch_blocks_both_families_idempotently() {
        let script = block_script(
            &ips(&["192.0.2.1", "2001:db8::7", "192.0.2.2"]),
            Duration::from_secs(3600),
        );
        assert_eq!(
            script,
            "add element inet tcpwatch blocked4 { 192.0.2.1, 192.0.2.2 }\n\
             delete element inet tcpwatch blocked4 { 192.0.2.1, 192.0.2.2 }\n\
             add element inet tcpwatch blocked4 { 192.0.2.1 timeout 3600s, 192.0.2.2 timeout 3600s }\n\
             add element inet tcpwatch blocked6 { 2001:db8::7 }\n\
             delete element inet tcpwatch blocked6 { 2001:db8::7 }\n\
             add element inet tcpwatch blocked6 { 2001:db8::7 timeout 3600s }\n"
        );
    }

    #[test]
    fn sub_second_ttls_are_written_in_ms() {
        let script = block_script(&ips(&["192.0.2.1"]), Duration::from_millis(1500));
        assert!(
            script.ends_with("{ 192.0.2.1 timeout 1500ms }\n"),
            "{script}"
        );
    }

    #[test]
    fn large_batches_are_chunked_in_one_script() {
        let many: Vec<IpNet> = (0..2500u32)
            .map(|n| IpNet::from(IpAddr::from(std::net::Ipv4Addr::from(0x0a00_0000 + n))))
            .collect();
        let script = block_script(&many, Duration::from_secs(30));
        assert_eq!(script.lines().count(), 9, "3 chunks x add/delete/add");
        assert_eq!(script.matches("timeout 30s").count(), 2500);
    }

    #[test]
    fn install_replaces_a_leftover_table_in_one_batch() {
        let script = install_script();
        let lines: Vec<&str> = script.lines().collect();
        assert_eq!(
            lines[..3],
            [
                "add table inet tcpwatch",
                "delete table inet tcpwatch",
                "add table inet tcpwatch"
            ]
        );
        assert!(script.contains("type filter hook prerouting priority raw;"));
        assert_eq!(script.matches("add rule").count(), 2);
        assert!(script.contains("ip saddr @blocked4 drop"));
        assert!(script.contains("ip6 saddr @blocked6 drop"));
    }

    #[test]
    fn unblock_and_remove_succeed_on_absent_objects() {
        assert_eq!(
            unblock_script("2001:db8::7/128".parse().unwrap()),
            "add element inet tcpwatch blocked6 { 2001:db8::7 }\ndelete element inet tcpwatch blocked6 { 2001:db8::7 }\n"
        );
        assert_eq!(
            remove_script(),
            "add table inet tcpwatch\ndelete table inet tcpwatch\n"
        );
    }

    #[test]
    fn parses_the_listing_of_nft_1_0_6() {
        let json = r#"{"nftables": [{"metainfo": {"version": "1.0.6", "release_name": "Lester Gooch #5", "json_schema_version": 1}}, {"set": {"family": "inet", "name": "blocked4", "table": "tcpwatch", "type": "ipv4_addr", "handle": 1, "flags": ["timeout"], "elem": [{"elem": {"val": "10.0.0.2", "timeout": 30, "expires": 29}}, "10.0.0.9"]}}]}"#;
        let entries = parse_list(json).unwrap();
        assert_eq!(
            entries,
            [
                Entry::new(
                    "10.0.0.2".parse::<IpAddr>().unwrap().into(),
                    Some(Duration::from_secs(29))
                ),
                Entry::new("10.0.0.9".parse::<IpAddr>().unwrap().into(), None),
            ]
        );
        let empty = r#"{"nftables": [{"metainfo": {}}, {"set": {"name": "blocked6", "type": "ipv6_addr"}}]}"#;
        assert!(parse_list(empty).unwrap().is_empty());
        assert!(parse_list("garbage").is_err());
    }

    #[test]
    fn a_table_missing_a_part_is_incomplete() {
        let set = |name: &str| format!(r#"{{"set": {{"name": "{name}", "table": "tcpwatch"}}}}"#);
        let chain = r#"{"chain": {"name": "prerouting", "table": "tcpwatch"}}"#;
        let rule = r#"{"rule": {"chain": "prerouting", "table": "tcpwatch"}}"#;
        let doc = |parts: &[&str]| format!(r#"{{"nftables": [{}]}}"#, parts.join(", "));
        let (s4, s6) = (set("blocked4"), set("blocked6"));
        check_complete(&doc(&[&s4, &s6, chain, rule, rule])).unwrap();
        let err = check_complete(&doc(&[&s4, chain, rule, rule])).unwrap_err();
        assert_eq!(
            err.to_string(),
            "table inet tcpwatch is incomplete (set blocked6 missing)"
        );
        let err = check_complete(&doc(&[&s4, &s6, chain])).unwrap_err();
        assert!(
            err.to_string()
                .contains("(rules of chain prerouting missing)"),
            "{err}"
        );
        let err = check_complete(&doc(&[])).unwrap_err();
        assert!(err
            .to_string()
            .contains("(set blocked4, set blocked6, chain prerouting missing)"));
    }
}
