//! The `pcap` source against what real scanners send besides SYNs: nmap's
//! FIN, NULL, Xmas, UDP and fragmented SYN scans, masscan's TCP and UDP
//! scans, SYNs behind IPv6 extension headers (`tests/probe.py`, raw
//! frames), a scanner rotating addresses inside its /64; and ordinary
//! traffic (HTTP, DNS-like and QUIC-like UDP flows) that must stay silent.
//!
//! The agent runs on host A; B scans; C makes ordinary traffic at the same
//! time. nmap does not fragment IPv6 (`-f -6` is refused); the IPv6
//! fragmented SYN is `probe.py`'s `split`.

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

/// The ports of a scan line matched by `line`.
fn ports_of(line: &Regex, text: &str) -> Vec<u16> {
    line.captures(text).unwrap()[1]
        .split(',')
        .map(|p| p.parse().unwrap())
        .collect()
}

/// The lines of a finished agent, apart from the scan line: each must be
/// a `New connection` from `scanner` to `target`; their destination ports
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

test_rows!(nmap_probe {
    fin_scan_v4_is_one_fin_scan_line: "-sF", false, Some("FIN scan");
    fin_scan_v6_is_one_fin_scan_line: "-sF", true, Some("FIN scan");
    null_scan_v4_is_one_null_scan_line: "-sN", false, Some("NULL scan");
    null_scan_v6_is_one_null_scan_line: "-sN", true, Some("NULL scan");
    xmas_scan_v4_is_one_xmas_scan_line: "-sX", false, Some("Xmas scan");
    xmas_scan_v6_is_one_xmas_scan_line: "-sX", true, Some("Xmas scan");
    udp_scan_v4_is_one_udp_scan_line: "-sU", false, Some("UDP scan");
    udp_scan_v6_is_one_udp_scan_line: "-sU", true, Some("UDP scan");
    fragmented_syn_scan_v4_is_a_syn_scan: "-f -sS", false, None;
});

/// `nmap SCAN` from B against A's ports 20-30 while C sends A a DNS-like
/// UDP flow (1,000 requests a second, answered): exactly one scan line of
/// the scan's kind, B -> A, four ports of the range ascending; a SYN scan
/// (fragmented) also prints a `New connection` per port, once each; the
/// probes of the other scans print nothing. C's flow prints nothing.
fn nmap_probe(scan: &str, v6: bool, kind: Option<&str>) {
    let Some(lab) = Lab::needing(&["nmap"], 3) else {
        return;
    };
    let _servers = servers(&lab);
    let agent = Agent::watching(&lab, Source::Pcap);
    let (target, scanner) = (lab.addr(A, v6), lab.addr(B, v6));
    let target_text = target.to_string();
    let flow = udp_flow(&lab, C, v6, 1000, 4.0, 40);
    let mut args = vec!["-n", "-Pn", "-T4", "-p", "20-30"];
    args.extend(scan.split(' '));
    if v6 {
        args.push("-6");
    }
    args.push(&target_text);
    let started = Instant::now();
    let nmap = lab.spawn(B, "nmap", &args);
    let line = scan_line(scanner, target, kind);
    let is_scan = |l: &str| event_text(l).is_some_and(|t| line.is_match(t));
    let found = agent.wait_for(is_scan, SCAN_LINE);
    let took = started.elapsed();
    let nmap = nmap.finish(Duration::from_secs(120));
    assert!(
        nmap.status.success(),
        "nmap: {}{}",
        nmap.stderr,
        nmap.stdout.join("\n")
    );
    let found = found.unwrap_or_else(|| {
        panic!(
            "no scan line within {SCAN_LINE:?}\nstdout: {:#?}\nstderr: {}\nnmap: {}",
            agent.stdout_lines(),
            agent.stderr(),
            nmap.stdout.join("\n")
        )
    });
    eprintln!("nmap {scan} (v6: {v6}): scan line {took:?} after nmap started");
    assert_flow(flow, 1000, 4.0);
    std::thread::sleep(Duration::from_millis(700));
    let finished = agent.stop();
    assert_eq!(finished.status.code(), Some(0), "{}", finished.stderr);
    let events = event_texts(&finished.stdout);
    let scans: Vec<&String> = events
        .iter()
        .filter(|e| e.starts_with("Port scan"))
        .collect();
    assert_eq!(scans.len(), 1, "{events:#?}");
    let text = event_text(&found).unwrap();
    let ports = ports_of(&line, text);
    assert!(ports.windows(2).all(|w| w[0] < w[1]), "{text}");
    assert!(ports.iter().all(|p| (20..=30).contains(p)), "{text}");
    let attempted = attempts(&events, scanner, target);
    if kind.is_none() {
        // Every port's SYN, put back together from its fragments, once.
        let mut seen: Vec<u16> = attempted.keys().copied().collect();
        seen.sort();
        assert_eq!(seen, (20..=30).collect::<Vec<u16>>(), "{events:#?}");
        assert!(attempted.values().all(|&n| n == 1), "{events:#?}");
    } else {
        assert!(attempted.is_empty(), "probes printed lines: {events:#?}");
    }
}

/// A's MAC address, for frames sent to it from B.
fn mac(lab: &Lab, index: usize) -> String {
    lab.output(index, "cat", &["/sys/class/net/eth0/address"])
        .trim()
        .to_string()
}

test_rows!(masscan_probe {
    masscan_syn_scan_v4_is_one_syn_scan_line: "20-30", false, None;
    masscan_udp_scan_v4_is_one_udp_scan_line: "U:20-30", false, Some("UDP scan");
});

/// masscan from B against A's ports 20-30 at a low rate, as raw frames on
/// B's eth0 addressed to A's MAC: one scan line of its kind; a SYN scan
/// also prints a line per SYN (masscan sends each port once).
fn masscan_probe(ports: &str, v6: bool, kind: Option<&str>) {
    let Some(lab) = Lab::needing(&["masscan"], 3) else {
        return;
    };
    let _servers = servers(&lab);
    let agent = Agent::watching(&lab, Source::Pcap);
    let (target, scanner) = (lab.addr(A, v6), lab.addr(B, v6));
    let (target_text, scanner_text, router) =
        (target.to_string(), scanner.to_string(), mac(&lab, A));
    let flow = udp_flow(&lab, C, v6, 1000, 3.0, 40);
    let args = [
        "-p",
        ports,
        &target_text,
        "--rate",
        "200",
        "--wait",
        "1",
        "--adapter",
        "eth0",
        "--adapter-ip",
        &scanner_text,
        "--router-mac",
        &router,
    ];
    let masscan = lab.spawn(B, "masscan", &args);
    let line = scan_line(scanner, target, kind);
    let is_scan = |l: &str| event_text(l).is_some_and(|t| line.is_match(t));
    let found = agent.wait_for(is_scan, SCAN_LINE);
    let masscan = masscan.finish(Duration::from_secs(60));
    assert!(masscan.status.success(), "masscan: {}", masscan.stderr);
    found.unwrap_or_else(|| {
        panic!(
            "no scan line\nstdout: {:#?}\nstderr: {}\nmasscan: {}",
            agent.stdout_lines(),
            agent.stderr(),
            masscan.stderr
        )
    });
    assert_flow(flow, 1000, 3.0);
    std::thread::sleep(Duration::from_millis(700));
    let finished = agent.stop();
    let events = event_texts(&finished.stdout);
    let scans = events.iter().filter(|e| e.starts_with("Port scan")).count();
    assert_eq!(scans, 1, "{events:#?}");
    let attempted = attempts(&events, scanner, target);
    if kind.is_none() {
        let mut seen: Vec<u16> = attempted.keys().copied().collect();
        seen.sort();
        assert_eq!(seen, (20..=30).collect::<Vec<u16>>(), "{events:#?}");
    } else {
        assert!(attempted.is_empty(), "{events:#?}");
    }
}

#[test]
fn ordinary_traffic_prints_its_connections_and_nothing_else() {
    let Some(lab) = Lab::needing(&["curl"], 3) else {
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
    let agent = Agent::watching(&lab, Source::Pcap);
    // DNS-like (small request and answer, 1,500 a second) and QUIC-like
    // (1,200-byte datagrams, 2,000 a second) flows over both families,
    // while C fetches pages.
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
    std::thread::sleep(Duration::from_millis(700));
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
}

#[test]
fn syns_behind_ipv6_extension_headers_are_seen() {
    let Some(lab) = Lab::new(2) else { return };
    let agent = Agent::watching(&lab, Source::Pcap);
    let (a, b) = (lab.v6(A).to_string(), lab.v6(B).to_string());
    let specs = [
        "7001:hbh",
        "7002:dst",
        "7003:rt",
        "7004:frag",
        "7005:hbh+dst+rt",
        "7006:split",
        "7007:dst+split",
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
    expected.push(port_scan(
        lab.v6(B).into(),
        lab.v6(A).into(),
        &[7001, 7002, 7003, 7004],
    ));
    agent.expect_exactly(
        &expected,
        Duration::from_secs(5),
        Duration::from_millis(700),
    );
}

#[test]
fn a_scanner_rotating_addresses_in_its_64_is_one_scan_of_the_prefix() {
    let Some(lab) = Lab::new(2) else { return };
    // The harness counts per address (the lab's hosts share one /64).
    let args = Args::watching(Source::Pcap).set("--ipv6-prefix", 64);
    let agent = Agent::watching_with(&lab, Source::Pcap, &args);
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
    agent.expect_exactly(
        &expected,
        Duration::from_secs(5),
        Duration::from_millis(700),
    );
}
