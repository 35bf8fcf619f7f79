//! Prints the BPF filter the pcap source compiles on an Ethernet interface,
//! so `scripts/bench-pcap-flood.sh`, `scripts/bench-pcap.sh` and
//! `scripts/bench-pcap-filter.sh` can run `tcpdump` with exactly the
//! agent's filter instead of a copy that drifts:
//! `cargo run --release --example pcap_filter`.
//!
//! `--snaplen` prints the agent's snaplen instead, `--buffer-kib` its
//! kernel buffer (tcpdump's `-B`); `--syn-only` prints the
//! filter of earlier versions, which passed SYNs only (the anchor of the
//! filter-cost benchmark).

fn main() {
    use tcpwatch::source::pcap::{filter, filter_with_vlan, BUFFER_BYTES, SNAPLEN};
    match std::env::args().nth(1).as_deref() {
        Some("--snaplen") => println!("{SNAPLEN}"),
        Some("--buffer-kib") => println!("{}", BUFFER_BYTES / 1024),
        Some("--syn-only") => println!("{}", filter::syn_only_with_vlan()),
        _ => println!("{}", filter_with_vlan()),
    }
}
