//! What the packet sources (pcap, xdp) must make of what real scanners send
//! besides SYNs, as one table: a [`Row`] per source says what it is held
//! to, and [`probe_tests!`] writes the tests of a row into its suite
//! (`pcap_probes`, `xdp_probes`, which keep their source's own cases):
//! nmap's FIN, NULL, Xmas, UDP and fragmented SYN scans, masscan's TCP and
//! UDP scans, SYNs behind IPv6 extension headers (`tests/probe.py`, raw
//! frames), a scanner rotating addresses inside its /64; and ordinary
//! traffic (HTTP, DNS-like and QUIC-like UDP flows) that must print only
//! its connections.
//!
//! The agent runs on host A; B scans; C makes ordinary traffic at the same
//! time. nmap does not fragment IPv6 (`-f -6` is refused); the IPv6
//! fragmented SYN is `probe.py`'s `split`.

use crate::agent::*;
use crate::lab::*;
use crate::proc::Proc;
use regex::Regex;
use std::collections::HashMap;
use std::net::IpAddr;
use std::time::{Duration, Instant};

/// What a packet source is held to.
pub struct Row {
    pub source: Source,
    /// Tools the source's tests need besides the scanner (xdp: bpftool,
    /// for its program's counters).
    pub tools: &'static [&'static str],
    /// Quiet time after the last expected line.
    pub quiet: Duration,
    /// Puts fragments back together: a fragmented SYN prints its `New
    /// connection`. Without it a first fragment (cut before the flags, or
    /// an IPv6 `split`) counts as a SYN probe and prints no line.
    pub reassembles: bool,
    /// The source is an XDP program whose `reported`/`lost` counters are
    /// checked: ordinary traffic costs one record per connection, none per
    /// datagram or segment with ACK.
    pub counters: bool,
}

pub const PCAP: Row = Row {
    source: Source::Pcap,
    tools: &[],
    quiet: Duration::from_millis(700),
    reassembles: true,
    counters: false,
};

pub const XDP: Row = Row {
    source: Source::Xdp,
    tools: &["bpftool"],
    quiet: Duration::from_millis(1000),
    reassembles: false,
    counters: true,
};

/// The tests of the table for `row` (a path to a [`Row`] constant), in the
/// suite that invokes it.
macro_rules! probe_tests {
    ($row:path) => {
        use crate::probes::{masscan_probe, nmap_probe};

        test_rows!(nmap_probe {
            fin_scan_v4_is_one_fin_scan_line: &$row, "-sF", false, Some("FIN scan");
            fin_scan_v6_is_one_fin_scan_line: &$row, "-sF", true, Some("FIN scan");
            null_scan_v4_is_one_null_scan_line: &$row, "-sN", false, Some("NULL scan");
            null_scan_v6_is_one_null_scan_line: &$row, "-sN", true, Some("NULL scan");
            xmas_scan_v4_is_one_xmas_scan_line: &$row, "-sX", false, Some("Xmas scan");
            xmas_scan_v6_is_one_xmas_scan_line: &$row, "-sX", true, Some("Xmas scan");
            udp_scan_v4_is_one_udp_scan_line: &$row, "-sU", false, Some("UDP scan");
            udp_scan_v6_is_one_udp_scan_line: &$row, "-sU", true, Some("UDP scan");
            syn_scan_v6_is_a_syn_scan: &$row, "-sS", true, None;
            fragmented_syn_scan_v4_is_a_syn_scan: &$row, "-f -sS", false, None;
        });

        test_rows!(masscan_probe {
            masscan_syn_scan_v4_is_one_syn_scan_line: &$row, "20-30", None;
            masscan_udp_scan_v4_is_one_udp_scan_line: &$row, "U:20-30", Some("UDP scan");
        });

        #[test]
        fn ordinary_traffic_prints_its_connections_and_nothing_else() {
            crate::probes::ordinary_traffic(&$row);
        }

        #[test]
        fn syns_behind_ipv6_extension_headers_are_seen() {
            crate::probes::extension_headers(&$row);
        }

        #[test]
        fn a_scanner_rotating_addresses_in_its_64_is_one_scan_of_the_prefix() {
            crate::probes::rotating_scanner(&$row);
        }
    };
}

/// The probe helper.
pub const PROBE: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/probe.py");

/// A UDP port of A that answers (an open port: probes of it get no ICMP).
const ECHO: u16 = 5353;

/// How long a scan line may take; UDP scans wait on the kernel's ICMP
/// rate limit (a burst of 6 answers, then 1 a second, per scanner).
const SCAN_LINE: Duration = Duration::from_secs(10);

/// A lab of `hosts` with `tools` and the row's own, when this machine can
/// run the row's source.
pub fn lab(row: &Row, tools: &[&str], hosts: usize) -> Option<Lab> {
    if !row.source.available() {
        return None;
    }
    let tools: Vec<&str> = tools.iter().chain(row.tools).copied().collect();
    Lab::needing(&tools, hosts)
}

/// A's TCP listeners (open ports: a stealth probe of them gets no answer)
/// and its UDP echo, held while the test runs.
struct Servers {
    _tcp: Proc,
    _udp: Proc,
}

fn servers(lab: &Lab) -> Servers {
    let tcp = lab.serve(A, Listen::Dual, &[22, 25, 80]);
    let udp = lab.spawn(A, "python3", &["-u", PROBE, "udp-echo", &ECHO.to_string()]);
    if udp.wait_for(|l| l == "ready", HELPER_TIMEOUT).is_none() {
        panic!("udp-echo not ready: {}", udp.stderr());
    }
    Servers {
        _tcp: tcp,
        _udp: udp,
    }
}

/// `probe.py udp-flow` from host `index` to A: `rate` datagrams of `size`
/// bytes a second for `seconds`, each answered by A's echo.
fn udp_flow(lab: &Lab, index: usize, v6: bool, rate: u32, seconds: f64, size: usize) -> Proc {
    let host = lab.addr(A, v6).to_string();
    let args = [
        "-u",
        PROBE,
        "udp-flow",
        &host,
        &ECHO.to_string(),
        &rate.to_string(),
        &seconds.to_string(),
        &size.to_string(),
    ];
    lab.spawn(index, "python3", &args)
}

/// Checks a finished `udp-flow`: it ran at `rate` and was answered.
fn assert_flow(flow: Proc, rate: u32, seconds: f64) {
    let done = flow.finish(Duration::from_secs(30));
    assert!(done.status.success(), "udp-flow: {}", done.stderr);
    let line = done.stdout.last().cloned().unwrap_or_default();
    let numbers: Vec<u64> = line
        .split_whitespace()
        .filter_map(|w| w.parse().ok())
        .collect();
    let [sent, received] = numbers[..] else {
        panic!("udp-flow printed '{line}'");
    };
    let want = (f64::from(rate) * seconds * 0.9) as u64;
    assert!(sent >= want, "udp-flow sent {sent}, wanted {want}");
    assert!(received * 10 >= sent * 9, "answered {received} of {sent}");
}

/// Host `index`'s MAC address, for frames sent to it.
pub fn mac(lab: &Lab, index: usize) -> String {
    lab.output(index, "cat", &["/sys/class/net/eth0/address"])
        .trim()
        .to_string()
}

/// `probe.py syn6` from B to A on eth0: a SYN for each `port:headers` spec
/// (from port 40000 + port), behind those IPv6 extension headers.
pub fn syn6(lab: &Lab, specs: &[&str]) {
    let (a, b) = (lab.v6(A).to_string(), lab.v6(B).to_string());
    let router = mac(lab, A);
    let mut args = vec!["-u", PROBE, "syn6", "eth0", &router, &b, &a];
    args.extend(specs);
    let sent = lab
        .spawn(B, "python3", &args)
        .finish(Duration::from_secs(20));
    assert!(sent.status.success(), "probe.py: {}", sent.stderr);
}

/// Waits for B's scan line while `scanner` runs, then checks what the
/// agent printed in all: exactly one scan line, of `kind`, four ports of
/// 20-30 ascending; a `New connection` per port of 20-30 once each when
/// `lines` (whole SYNs), none otherwise. Returns how long the line took.
fn expect_one_scan(
    row: &Row,
    lab: &Lab,
    agent: Agent,
    scanner: Proc,
    v6: bool,
    kind: Option<&str>,
    lines: bool,
) -> Duration {
    let started = Instant::now();
    let (target, from) = (lab.addr(A, v6), lab.addr(B, v6));
    let line = scan_line(from, target, kind);
    let (found, took) = agent.scan_during(scanner, &line, SCAN_LINE, started);
    let events = agent.stop_after_one_scan(row.quiet);
    let text = event_text(&found).unwrap();
    let ports = ports_of(&line, text);
    assert!(ports.windows(2).all(|w| w[0] < w[1]), "{text}");
    assert!(ports.iter().all(|p| (20..=30).contains(p)), "{text}");
    let attempted = attempts(&events, from, target);
    if lines {
        let mut seen: Vec<u16> = attempted.keys().copied().collect();
        seen.sort();
        assert_eq!(seen, (20..=30).collect::<Vec<u16>>(), "{events:#?}");
        assert!(attempted.values().all(|&n| n == 1), "{events:#?}");
    } else {
        assert!(attempted.is_empty(), "probes printed lines: {events:#?}");
    }
    took
}

/// `nmap SCAN` from B against A's ports 20-30 while C sends A a DNS-like
/// UDP flow (1,000 requests a second, answered): exactly one scan line of
/// the scan's kind, B -> A. A whole SYN prints its `New connection` (once
/// per port); nmap -f's first fragment holds 8 bytes of TCP, not the
/// flags: a source that [`Row::reassembles`] prints the SYN put back
/// together, another counts it as a SYN probe without a line. The probes
/// of the other scans print nothing, nor does C's flow.
pub fn nmap_probe(row: &Row, scan: &str, v6: bool, kind: Option<&str>) {
    let Some(lab) = lab(row, &["nmap"], 3) else {
        return;
    };
    let _servers = servers(&lab);
    let agent = Agent::watching(&lab, row.source);
    let target = lab.addr(A, v6).to_string();
    let flow = udp_flow(&lab, C, v6, 1000, 4.0, 40);
    let mut args = vec!["-n", "-Pn", "-T4", "-p", "20-30"];
    args.extend(scan.split(' '));
    if v6 {
        args.push("-6");
    }
    args.push(&target);
    let nmap = lab.spawn(B, "nmap", &args);
    let whole_syns = scan == "-sS" || (scan == "-f -sS" && row.reassembles);
    let took = expect_one_scan(row, &lab, agent, nmap, v6, kind, whole_syns);
    eprintln!("nmap {scan} (v6: {v6}): scan line {took:?} after nmap started");
    assert_flow(flow, 1000, 4.0);
}

/// masscan from B against A's ports 20-30 at a low rate, as raw frames on
/// B's eth0 addressed to A's MAC: one scan line of its kind; a SYN scan
/// also prints a line per SYN (masscan sends each port once).
pub fn masscan_probe(row: &Row, ports: &str, kind: Option<&str>) {
    let Some(lab) = lab(row, &["masscan"], 3) else {
        return;
    };
    let _servers = servers(&lab);
    let agent = Agent::watching(&lab, row.source);
    let (target, scanner, router) = (lab.v4(A).to_string(), lab.v4(B).to_string(), mac(&lab, A));
    let flow = udp_flow(&lab, C, false, 1000, 3.0, 40);
    let args = [
        "-p",
        ports,
        &target,
        "--rate",
        "200",
        "--wait",
        "1",
        "--adapter",
        "eth0",
        "--adapter-ip",
        &scanner,
        "--router-mac",
        &router,
    ];
    let masscan = lab.spawn(B, "masscan", &args);
    expect_one_scan(row, &lab, agent, masscan, false, kind, kind.is_none());
    assert_flow(flow, 1000, 3.0);
}

/// The totals of the XDP program's per-CPU counters on host `index`'s
/// eth0: `(reported, lost)`, records the ring buffer took and records it
/// had no room for.
pub fn counters(lab: &Lab, index: usize) -> (u64, u64) {
    let programs = lab.xdp_programs(index);
    let id = programs
        .first()
        .and_then(|l| l.split_whitespace().nth(2))
        .unwrap_or_else(|| panic!("no XDP program on eth0: {programs:?}"));
    let shown = lab.output(index, "bpftool", &["-j", "prog", "show", "id", id]);
    let shown: serde_json::Value = serde_json::from_str(&shown).unwrap();
    let mut found = HashMap::new();
    for map in shown["map_ids"].as_array().expect("map_ids") {
        let map = map.as_u64().unwrap().to_string();
        let info = lab.output(index, "bpftool", &["-j", "map", "show", "id", &map]);
        let info: serde_json::Value = serde_json::from_str(&info).unwrap();
        let name = info["name"].as_str().unwrap_or_default().to_string();
        if name == "reported" || name == "lost" {
            let dump = lab.output(index, "bpftool", &["-j", "map", "dump", "id", &map]);
            let dump: serde_json::Value = serde_json::from_str(&dump).unwrap();
            let total: u64 = dump
                .as_array()
                .unwrap()
                .iter()
                .flat_map(|entry| entry["formatted"]["values"].as_array().unwrap().iter())
                .map(|v| v["value"].as_u64().unwrap())
                .sum();
            found.insert(name, total);
        }
    }
    (found["reported"], found["lost"])
}

/// HTTP from C, DNS-like (small request and answer, 1,500 a second) and
/// QUIC-like (1,200-byte datagrams, 2,000 a second) flows over both
/// families: a line per page fetched and nothing else; with
/// [`Row::counters`], the program reports exactly one record per page (its
/// SYN), none for the UDP datagrams or any segment with ACK.
pub fn ordinary_traffic(row: &Row) {
    let Some(lab) = lab(row, &["curl"], 3) else {
        return;
    };
    let _servers = servers(&lab);
    let http = lab.spawn(
        A,
        "python3",
        &["-u", "-m", "http.server", "8000", "--bind", "::"],
    );
    if http
        .wait_for(|l| l.starts_with("Serving HTTP"), HELPER_TIMEOUT)
        .is_none()
    {
        panic!("http.server not ready: {}", http.stderr());
    }
    let agent = Agent::watching(&lab, row.source);
    let before = row.counters.then(|| counters(&lab, A));
    let flows = [
        (udp_flow(&lab, C, false, 1500, 3.0, 40), 1500),
        (udp_flow(&lab, B, true, 1500, 3.0, 40), 1500),
        (udp_flow(&lab, B, false, 2000, 3.0, 1200), 2000),
    ];
    let url = format!("http://{}:8000/", lab.v4(A));
    let mut fetched = 0;
    let deadline = Instant::now() + Duration::from_secs(2);
    while Instant::now() < deadline {
        let (code, _) = lab.http_get(C, &url);
        assert_eq!(code, 200);
        fetched += 1;
    }
    for (flow, rate) in flows {
        assert_flow(flow, rate, 3.0);
    }
    std::thread::sleep(row.quiet);
    let after = row.counters.then(|| counters(&lab, A));
    let finished = agent.stop();
    drop(http);
    let events = event_texts(&finished.stdout);
    let page = Regex::new(&format!(
        r"^New connection: {}:\d+ -> {}:8000$",
        regex::escape(&lab.v4(C).to_string()),
        regex::escape(&lab.v4(A).to_string())
    ))
    .unwrap();
    assert!(events.iter().all(|e| page.is_match(e)), "{events:#?}");
    assert_eq!(
        events.len(),
        fetched,
        "one line per page fetched: {events:#?}"
    );
    if let (Some((reported0, lost0)), Some((reported, lost))) = (before, after) {
        assert_eq!(
            (reported - reported0, lost - lost0),
            (fetched as u64, 0),
            "records the program made for {fetched} pages and 13,500 datagrams"
        );
    }
}

/// SYNs behind IPv6 hop-by-hop, destination, routing and fragment headers
/// and their chains: a line each, and a scan of the first four. A SYN
/// split in two fragments (`split`, the flags in the second) prints its
/// line where the source [`Row::reassembles`]; elsewhere the SYN comes
/// whole in one fragment (`dst+frag`).
pub fn extension_headers(row: &Row) {
    let Some(lab) = lab(row, &[], 2) else { return };
    let agent = Agent::watching(&lab, row.source);
    let mut specs = vec![
        "7001:hbh",
        "7002:dst",
        "7003:rt",
        "7004:frag",
        "7005:hbh+dst+rt",
    ];
    if row.reassembles {
        specs.extend(["7006:split", "7007:dst+split"]);
    } else {
        specs.push("7006:dst+frag");
    }
    syn6(&lab, &specs);
    let mut expected: Vec<String> = specs
        .iter()
        .map(|spec| {
            let port: u16 = spec.split(':').next().unwrap().parse().unwrap();
            new_connection(at(lab.v6(B), 40000 + port), at(lab.v6(A), port))
        })
        .collect();
    expected.push(port_scan(
        lab.v6(B).into(),
        lab.v6(A).into(),
        &[7001, 7002, 7003, 7004],
    ));
    agent.expect_exactly(&expected, Duration::from_secs(5), row.quiet);
}

/// Ten SYNs, each from a new address of one /64: a line each, and one scan
/// of the /64 (`--ipv6-prefix 64`, the default, which the harness lowers
/// to 128 because the lab's hosts share a /64).
pub fn rotating_scanner(row: &Row) {
    let Some(lab) = lab(row, &[], 2) else { return };
    let args = Args::watching(row.source).set("--ipv6-prefix", 64);
    let agent = Agent::watching_with(&lab, row.source, &args);
    let a = lab.v6(A).to_string();
    let ports: Vec<String> = (6001..=6010).map(|p: u16| p.to_string()).collect();
    let router = mac(&lab, A);
    let mut args = vec!["-u", PROBE, "rotate", "eth0", &router, "fd00:5ca:1:2::", &a];
    args.extend(ports.iter().map(String::as_str));
    let sent = lab
        .spawn(B, "python3", &args)
        .finish(Duration::from_secs(20));
    assert!(sent.status.success(), "probe.py: {}", sent.stderr);
    assert_eq!(sent.stdout.len(), 10);
    let mut expected: Vec<String> = sent
        .stdout
        .iter()
        .map(|line| {
            let (ip, port) = line.split_once(' ').unwrap();
            let ip: IpAddr = ip.parse().unwrap();
            new_connection(at(ip, 40000), at(lab.v6(A), port.parse().unwrap()))
        })
        .collect();
    expected.push(format!(
        "Port scan detected: fd00:5ca:1:2::/64 -> {a} on ports 6001,6002,6003,6004"
    ));
    agent.expect_exactly(&expected, Duration::from_secs(5), row.quiet);
}
