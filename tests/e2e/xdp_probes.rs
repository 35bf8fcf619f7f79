//! The `xdp` source against what real scanners send besides SYNs: nmap's
//! FIN, NULL, Xmas, UDP and fragmented SYN scans, masscan's TCP and UDP
//! scans, SYNs behind IPv6 extension headers (`tests/probe.py`, raw
//! frames), a scanner rotating addresses inside its /64; ordinary traffic
//! (HTTP, DNS-like and QUIC-like UDP flows) that must print nothing and
//! cost no report; and a spoofed SYN flood whose every SYN the program saw
//! is accounted for (printed, or counted lost).
//!
//! The agent runs on host A; B scans; C makes ordinary traffic at the same
//! time. What the program reports is read from its own counters (`reported`,
//! `lost`) with bpftool while it runs. nmap does not fragment IPv6 (`-f -6`
//! is refused); the IPv6 fragment is `probe.py`'s `split`.
//!
//! Through xdp, a probe that is not a whole SYN (FIN, NULL, Xmas, a first
//! fragment cut before the flags, a UDP probe seen in A's port unreachable)
//! counts toward a scan and prints no line of its own.

use crate::agent::*;
use crate::lab::*;
use crate::proc::Proc;
use regex::Regex;
use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};
use std::time::{Duration, Instant};

/// The probe helper.
const PROBE: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/probe.py");

/// A UDP port of A that answers (an open port: probes of it get no ICMP).
const ECHO: u16 = 5353;

/// How long a scan line may take; UDP scans wait on the kernel's ICMP
/// rate limit (a burst of 6 answers, then 1 a second, per scanner).
const SCAN_LINE: Duration = Duration::from_secs(10);

/// Quiet time after the last expected line.
const QUIET: Duration = Duration::from_millis(1000);

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

/// A lab of `hosts` with `tools`, when this machine can run the xdp source.
fn lab(tools: &[&str], hosts: usize) -> Option<Lab> {
    if !Source::Xdp.available() {
        return None;
    }
    Lab::needing(tools, hosts)
}

/// The totals of the program's per-CPU counters on host `index`'s eth0:
/// `(reported, lost)`, records the ring buffer took and records it had no
/// room for.
fn counters(lab: &Lab, index: usize) -> (u64, u64) {
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

/// A regex of B's scan line against A: four ports, and `kind` at the end
/// (`None` for a SYN scan, whose line has no suffix).
fn scan_line(scanner: IpAddr, target: IpAddr, kind: Option<&str>) -> Regex {
    let suffix = kind.map_or(String::new(), |k| format!(r" \({}\)", regex::escape(k)));
    Regex::new(&format!(
        r"^Port scan detected: {} -> {} on ports (\d+(?:,\d+){{3}}){suffix}$",
        regex::escape(&scanner.to_string()),
        regex::escape(&target.to_string())
    ))
    .unwrap()
}

/// The lines of a finished agent, apart from scan lines: each must be a
/// `New connection` from `scanner` to `target`; their destination ports
/// with how often each came.
fn attempts(events: &[String], scanner: IpAddr, target: IpAddr) -> HashMap<u16, usize> {
    let mut ports = HashMap::new();
    for event in events.iter().filter(|e| !e.starts_with("Port scan")) {
        let rest = event
            .strip_prefix("New connection: ")
            .unwrap_or_else(|| panic!("unexpected line: {event}\nall: {events:#?}"));
        let (from, to) = rest.split_once(" -> ").unwrap();
        let (from, to): (SocketAddr, SocketAddr) = (from.parse().unwrap(), to.parse().unwrap());
        assert_eq!((from.ip(), to.ip()), (scanner, target), "{event}");
        *ports.entry(to.port()).or_insert(0) += 1;
    }
    ports
}

/// Waits for B's scan line while `scanner` runs, then checks what the
/// agent printed in all: exactly one scan line, of `kind`, four ports of
/// 20-30 ascending; a `New connection` per port of 20-30 once each when
/// `lines` (whole SYNs), none otherwise. Returns how long the line took.
fn expect_one_scan(
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
    let is_scan = |l: &str| event_text(l).is_some_and(|t| line.is_match(t));
    let found = agent.wait_for(is_scan, SCAN_LINE);
    let took = started.elapsed();
    let ran = scanner.finish(Duration::from_secs(120));
    assert!(
        ran.status.success(),
        "scanner: {}{}",
        ran.stderr,
        ran.stdout.join("\n")
    );
    let found = found.unwrap_or_else(|| {
        panic!(
            "no scan line within {SCAN_LINE:?}\nstdout: {:#?}\nstderr: {}\nscanner: {}{}",
            agent.stdout_lines(),
            agent.stderr(),
            ran.stderr,
            ran.stdout.join("\n")
        )
    });
    std::thread::sleep(QUIET);
    let finished = agent.stop();
    assert_eq!(finished.status.code(), Some(0), "{}", finished.stderr);
    let events = event_texts(&finished.stdout);
    let scans: Vec<&String> = events
        .iter()
        .filter(|e| e.starts_with("Port scan"))
        .collect();
    assert_eq!(scans.len(), 1, "{events:#?}");
    let text = event_text(&found).unwrap();
    let ports: Vec<u16> = line.captures(text).unwrap()[1]
        .split(',')
        .map(|p| p.parse().unwrap())
        .collect();
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

test_rows!(nmap_probe {
    fin_scan_v4_is_one_fin_scan_line: "-sF", false, Some("FIN scan");
    fin_scan_v6_is_one_fin_scan_line: "-sF", true, Some("FIN scan");
    null_scan_v4_is_one_null_scan_line: "-sN", false, Some("NULL scan");
    null_scan_v6_is_one_null_scan_line: "-sN", true, Some("NULL scan");
    xmas_scan_v4_is_one_xmas_scan_line: "-sX", false, Some("Xmas scan");
    xmas_scan_v6_is_one_xmas_scan_line: "-sX", true, Some("Xmas scan");
    udp_scan_v4_is_one_udp_scan_line: "-sU", false, Some("UDP scan");
    udp_scan_v6_is_one_udp_scan_line: "-sU", true, Some("UDP scan");
    syn_scan_v6_is_a_syn_scan: "-sS", true, None;
    fragmented_syn_scan_v4_is_a_syn_scan: "-f -sS", false, None;
});

/// `nmap SCAN` from B against A's ports 20-30 while C sends A a DNS-like
/// UDP flow (1,000 requests a second, answered): exactly one scan line of
/// the scan's kind, B -> A. A whole SYN prints its `New connection` (once
/// per port); nmap -f's first fragment holds 8 bytes of TCP, not the
/// flags, and counts as a SYN probe without a line. C's flow prints
/// nothing.
fn nmap_probe(scan: &str, v6: bool, kind: Option<&str>) {
    let Some(lab) = lab(&["nmap", "bpftool"], 3) else {
        return;
    };
    let _servers = servers(&lab);
    let agent = Agent::watching(&lab, Source::Xdp);
    let target = lab.addr(A, v6).to_string();
    let flow = udp_flow(&lab, C, v6, 1000, 4.0, 40);
    let mut args = vec!["-n", "-Pn", "-T4", "-p", "20-30"];
    args.extend(scan.split(' '));
    if v6 {
        args.push("-6");
    }
    args.push(&target);
    let nmap = lab.spawn(B, "nmap", &args);
    let whole_syns = scan == "-sS";
    let took = expect_one_scan(&lab, agent, nmap, v6, kind, whole_syns);
    eprintln!("nmap {scan} (v6: {v6}): scan line {took:?} after nmap started");
    assert_flow(flow, 1000, 4.0);
}

/// Host `index`'s MAC address, for frames sent to it.
fn mac(lab: &Lab, index: usize) -> String {
    lab.output(index, "cat", &["/sys/class/net/eth0/address"])
        .trim()
        .to_string()
}

test_rows!(masscan_probe {
    masscan_syn_scan_v4_is_one_syn_scan_line: "20-30", None;
    masscan_udp_scan_v4_is_one_udp_scan_line: "U:20-30", Some("UDP scan");
});

/// masscan from B against A's ports 20-30 at a low rate, as raw frames on
/// B's eth0 addressed to A's MAC: one scan line of its kind; a SYN scan
/// also prints a line per SYN (masscan sends each port once).
fn masscan_probe(ports: &str, kind: Option<&str>) {
    let Some(lab) = lab(&["masscan", "bpftool"], 3) else {
        return;
    };
    let _servers = servers(&lab);
    let agent = Agent::watching(&lab, Source::Xdp);
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
    expect_one_scan(&lab, agent, masscan, false, kind, kind.is_none());
    assert_flow(flow, 1000, 3.0);
}

/// HTTP from C, DNS-like (small request and answer, 1,500 a second) and
/// QUIC-like (1,200-byte datagrams, 2,000 a second) flows over both
/// families: a line per page fetched and nothing else; the program reports
/// exactly one record per page (its SYN), none for the UDP datagrams or
/// any segment with ACK.
#[test]
fn ordinary_traffic_prints_its_connections_and_costs_no_report() {
    let Some(lab) = lab(&["curl", "bpftool"], 3) else {
        return;
    };
    let _servers = servers(&lab);
    let http = lab.spawn(A, "python3", &["-m", "http.server", "8000", "--bind", "::"]);
    let agent = Agent::watching(&lab, Source::Xdp);
    let url = format!("http://{}:8000/", lab.v4(A));
    // The server is up (each try prints a line: they are left out).
    assert!(within(HELPER_TIMEOUT, || lab
        .try_connect(C, lab.v4(A).into(), 8000)
        .is_ok()));
    std::thread::sleep(QUIET);
    let before = agent.stdout_lines().len();
    let (reported_before, lost_before) = counters(&lab, A);
    let flows = [
        (udp_flow(&lab, C, false, 1500, 3.0, 40), 1500),
        (udp_flow(&lab, B, true, 1500, 3.0, 40), 1500),
        (udp_flow(&lab, B, false, 2000, 3.0, 1200), 2000),
    ];
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
    std::thread::sleep(QUIET);
    let (reported, lost) = counters(&lab, A);
    let finished = agent.stop();
    drop(http);
    let events = event_texts(&finished.stdout[before..]);
    let page = Regex::new(&format!(
        r"^New connection: {}:\d+ -> {}:8000$",
        regex::escape(&lab.v4(C).to_string()),
        regex::escape(&lab.v4(A).to_string())
    ))
    .unwrap();
    assert!(events.iter().all(|e| page.is_match(e)), "{events:#?}");
    assert_eq!(events.len(), fetched, "{events:#?}");
    assert_eq!(
        (reported - reported_before, lost - lost_before),
        (fetched as u64, 0),
        "records the program made for {fetched} pages and 13,500 datagrams"
    );
}

#[test]
fn syns_behind_ipv6_extension_headers_are_seen() {
    let Some(lab) = lab(&[], 2) else { return };
    let agent = Agent::watching(&lab, Source::Xdp);
    let (a, b) = (lab.v6(A).to_string(), lab.v6(B).to_string());
    let specs = [
        "7001:hbh",
        "7002:dst",
        "7003:rt",
        "7004:frag",
        "7005:hbh+dst+rt",
        "7006:dst+frag",
    ];
    let mut args = vec!["-u", PROBE, "syn6", "eth0"];
    let router = mac(&lab, A);
    args.extend([router.as_str(), &b, &a]);
    args.extend(specs);
    let sent = lab
        .spawn(B, "python3", &args)
        .finish(Duration::from_secs(20));
    assert!(sent.status.success(), "probe.py: {}", sent.stderr);
    let mut expected: Vec<String> = specs
        .iter()
        .map(|spec| {
            let port: u16 = spec.split(':').next().unwrap().parse().unwrap();
            new_connection(at(lab.v6(B), 40000 + port), at(lab.v6(A), port))
        })
        .collect();
    expected.insert(
        4,
        port_scan(
            lab.v6(B).into(),
            lab.v6(A).into(),
            &[7001, 7002, 7003, 7004],
        ),
    );
    agent.expect_exactly(&expected, Duration::from_secs(5), QUIET);
}

/// A SYN split in two IPv6 fragments, the flags in the second: the first
/// holds the ports, and counts as a SYN probe (no line of its own).
#[test]
fn an_ipv6_first_fragment_counts_toward_a_scan() {
    let Some(lab) = lab(&[], 2) else { return };
    let agent = Agent::watching(&lab, Source::Xdp);
    let (a, b) = (lab.v6(A).to_string(), lab.v6(B).to_string());
    let specs = [
        "7101:split",
        "7102:dst+split",
        "7103:hbh+split",
        "7104:split",
    ];
    let mut args = vec!["-u", PROBE, "syn6", "eth0"];
    let router = mac(&lab, A);
    args.extend([router.as_str(), &b, &a]);
    args.extend(specs);
    let sent = lab
        .spawn(B, "python3", &args)
        .finish(Duration::from_secs(20));
    assert!(sent.status.success(), "probe.py: {}", sent.stderr);
    let expected = [port_scan(
        lab.v6(B).into(),
        lab.v6(A).into(),
        &[7101, 7102, 7103, 7104],
    )];
    agent.expect_exactly(&expected, Duration::from_secs(5), QUIET);
}

/// Ten SYNs, each from a new address of one /64: a line each, and one scan
/// of the /64 (`--ipv6-prefix 64`, the default, which the harness lowers
/// to 128 because the lab's hosts share a /64).
#[test]
fn a_scanner_rotating_addresses_in_its_64_is_one_scan_of_the_prefix() {
    let Some(lab) = lab(&[], 2) else { return };
    let args = Args::watching(Source::Xdp).set("--ipv6-prefix", 64);
    let agent = Agent::spawn(&lab, A, &args);
    assert!(
        agent.wait_for_stderr("watching: xdp on eth0", Duration::from_secs(10)),
        "agent did not attach: {}",
        agent.stderr()
    );
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
    expected.insert(
        4,
        format!("Port scan detected: fd00:5ca:1:2::/64 -> {a} on ports 6001,6002,6003,6004"),
    );
    agent.expect_exactly(&expected, Duration::from_secs(5), QUIET);
}

/// A's eth0 receive counter (packets).
fn rx_packets(lab: &Lab) -> u64 {
    let text = lab.output(A, "cat", &["/sys/class/net/eth0/statistics/rx_packets"]);
    text.trim().parse().unwrap()
}

/// A 3 s spoofed SYN flood (`hping3 --flood -S --rand-source`), running
/// alone: every SYN the program saw is accounted for. What the ring
/// buffer took is printed, a line each (`reported` = lines), and SYNs
/// it had no room for are counted (`reported + lost` = what A received).
#[test]
fn a_spoofed_flood_is_accounted_for() {
    if !Source::Xdp.available() {
        return;
    }
    let Some(lab) = Lab::alone(&["hping3", "bpftool"], 2) else {
        return;
    };
    let agent = Agent::watching(&lab, Source::Xdp);
    let (reported0, lost0) = counters(&lab, A);
    let rx0 = rx_packets(&lab);
    let a = lab.v4(A).to_string();
    let args = [
        "-s",
        "INT",
        "3",
        "hping3",
        "--flood",
        "-S",
        "--rand-source",
        "-p",
        "8080",
        &a,
    ];
    lab.run(B, "timeout", &args);
    // Drained: the count of lines stops growing.
    let mut printed = agent.stdout_lines().len();
    loop {
        std::thread::sleep(Duration::from_millis(500));
        let now = agent.stdout_lines().len();
        if now == printed {
            break;
        }
        printed = now;
    }
    let received = rx_packets(&lab) - rx0;
    let (reported, lost) = counters(&lab, A);
    let (reported, lost) = (reported - reported0, lost - lost0);
    let finished = agent.stop();
    let lines = finished
        .stdout
        .iter()
        .filter(|l| l.contains("New connection: "))
        .count() as u64;
    eprintln!(
        "flood: A received {received}; the program reported {reported}, lost {lost}; {lines} lines"
    );
    assert!(received >= 10_000, "the flood was too weak: {received}");
    assert_eq!(lines, reported, "every record the ring took is a line");
    // A few packets that are not SYNs (neighbour discovery) may arrive too.
    assert!(
        received >= reported + lost && received - (reported + lost) <= 20,
        "received {received}, program saw {}",
        reported + lost
    );
}
