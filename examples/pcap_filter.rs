//! Prints the BPF filter the pcap source compiles on an Ethernet interface,
//! so `scripts/bench-pcap-flood.sh`, `scripts/bench-pcap.sh` and
//! `scripts/bench-pcap-filter.sh` can run `tcpdump` with exactly the
//! agent's filter instead of a copy that drifts:
//! `cargo run --release --example pcap_filter`.
//!
//! `--snaplen` prints the agent's snaplen instead; `--syn-only` prints the
//! filter of earlier versions, which passed SYNs only (the anchor of the
//! filter-cost benchmark).

fn main() {
    use tcpwatch::source::pcap::{filter, filter_with_vlan, SNAPLEN};
    match std::env::args().nth(1).as_deref() {
        Some("--snaplen") => println!("{SNAPLEN}"),
        Some("--syn-only") => println!("{}", filter::syn_only_with_vlan()),
        _ => println!("{}", filter_with_vlan()),
    }
}
