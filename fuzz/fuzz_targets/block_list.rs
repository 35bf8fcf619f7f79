//! Fuzzes the readers of the firewall's own listings, which `tcpwatch
//! blocks` and the restore at start-up trust: `nft -j list set` JSON
//! (`block::nft::parse_list`) and `ipset list -output save` text
//! (`block::iptables::parse_save`). The same input goes to both.
//!
//! Besides "never panics", it checks that the entries each one returns,
//! written back in that tool's format, read back the same; and that
//! `parse_save` finds no more entries than the text has `add` lines, none
//! of them with zero time left (`timeout 0` is ipset's "never expires").
#![no_main]

use libfuzzer_sys::fuzz_target;
use std::time::Duration;
use tcpwatch::block::iptables::parse_save;
use tcpwatch::block::nft::parse_list;
use tcpwatch::block::backend::Entry;

fuzz_target!(|data: &[u8]| {
    let text = String::from_utf8_lossy(data);
    match parse_list(&text) {
        Ok(entries) => {
            let json = nft_json(&entries);
            assert_eq!(parse_list(&json).unwrap(), entries, "{json}");
        }
        Err(e) => {
            let message = format!("{e:#}");
            assert!(!message.contains('\n'), "{message:?}");
        }
    }
    let entries = parse_save(&text);
    let adds = text
        .lines()
        .filter(|l| l.trim_start().starts_with("add"))
        .count();
    assert!(
        entries.len() <= adds,
        "{} entries from {adds} add lines",
        entries.len()
    );
    assert!(
        entries.iter().all(|e| e.remaining != Some(Duration::ZERO)),
        "timeout 0 read as expiring now"
    );
    let saved = ipset_save(&entries);
    assert_eq!(parse_save(&saved), entries, "{saved}");
});

fn nft_json(entries: &[Entry]) -> String {
    let elems: Vec<String> = entries
        .iter()
        .map(|e| match e.remaining {
            Some(left) => format!(
                r#"{{"elem": {{"val": "{}", "timeout": 3600, "expires": {}}}}}"#,
                tcpwatch::event::show_net(&e.target),
                left.as_secs()
            ),
            None => format!(r#""{}""#, tcpwatch::event::show_net(&e.target)),
        })
        .collect();
    format!(
        r#"{{"nftables": [{{"metainfo": {{"version": "1.0.6"}}}}, {{"set": {{"family": "inet", "name": "blocked", "table": "tcpwatch", "elem": [{}]}}}}]}}"#,
        elems.join(", ")
    )
}

fn ipset_save(entries: &[Entry]) -> String {
    let mut out =
        "create tcpwatch4 hash:ip family inet hashsize 1024 maxelem 65536 timeout 0\n".to_string();
    for e in entries {
        match e.remaining {
            Some(left) => out.push_str(&format!(
                "add tcpwatch4 {} timeout {}\n",
                tcpwatch::event::show_net(&e.target),
                left.as_secs()
            )),
            None => out.push_str(&format!("add tcpwatch4 {}\n", tcpwatch::event::show_net(&e.target))),
        }
    }
    out
}
