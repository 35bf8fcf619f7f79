//! The `pcap` source against what real scanners send besides SYNs: its row
//! of the table in [`crate::probes`] (nmap's and masscan's stealth, UDP and
//! fragmented scans, IPv6 extension headers, a scanner rotating addresses
//! in its /64, ordinary traffic that must stay silent). pcap puts fragments
//! back together: a fragmented SYN prints its `New connection`.

probe_tests!(crate::probes::PCAP);
