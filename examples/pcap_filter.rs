//! Prints the BPF filter the pcap source compiles on an Ethernet interface,
//! so `scripts/bench-pcap-flood.sh` and `scripts/bench-pcap.sh` can run
//! `tcpdump` with exactly the agent's filter instead of a copy that drifts:
//! `cargo run --release --example pcap_filter`.

fn main() {
    println!("{}", tcpwatch::source::pcap::filter_with_vlan());
}
