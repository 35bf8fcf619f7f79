//! `tcpwatch replay` against real traffic: a capture of a real `nmap -sS`
//! scan recorded with tcpdump in the target's namespace, and
//! /proc/net/tcp{,6} snapshots of a lab host compared with what the live
//! agent printed for the same connections.

use crate::agent::*;
use crate::lab::*;
use regex::Regex;
use std::net::IpAddr;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

/// A two-host lab, when root and the tools the tests drive are present.
fn lab() -> Option<Lab> {
    Lab::needing(&["nmap", "tcpdump"], 2)
}

/// `tcpwatch replay ARGS...`: exit 0 and stdout, or a panic with stderr.
fn replay(args: &[&str]) -> String {
    let out = Command::new(AGENT)
        .arg("replay")
        .args(args)
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(0), "replay {args:?}: {stderr}");
    assert!(stderr.is_empty(), "replay {args:?} had to say: {stderr}");
    String::from_utf8(out.stdout).unwrap()
}

fn events(stdout: &str) -> Vec<String> {
    let lines: Vec<String> = stdout.lines().map(str::to_string).collect();
    event_texts(&lines)
}

/// Records host A's eth0 while B runs `nmap -sS` on A's ports 20-30.
fn record_syn_scan(lab: &Lab, pcap: &Path) {
    let tcpdump = record(lab, A, pcap, &["-i", "eth0"]);
    let target = lab.v4(A).to_string();
    lab.output(
        B,
        "nmap",
        &["-n", "-Pn", "-T4", "-sS", "-p", "20-30", &target],
    );
    std::thread::sleep(Duration::from_millis(300));
    stop_recording(tcpdump);
}

#[test]
fn replay_of_a_recorded_syn_scan_prints_one_scan_line() {
    let Some(lab) = lab() else { return };
    let _server = lab.serve(A, Listen::V4, &[22, 25]);
    let dir = tempfile::tempdir().unwrap();
    let pcap = dir.path().join("scan.pcap");
    record_syn_scan(&lab, &pcap);
    let file = pcap.to_str().unwrap();

    let stdout = replay(&[file]);
    let events = events(&stdout);
    let (a, b) = (lab.v4(A), lab.v4(B));
    let scan = Regex::new(&format!(
        r"^Port scan detected: {} -> {} on ports (\d+(?:,\d+)*)$",
        regex::escape(&b.to_string()),
        regex::escape(&a.to_string())
    ))
    .unwrap();
    let scans: Vec<usize> = (0..events.len())
        .filter(|&i| events[i].starts_with("Port scan"))
        .collect();
    if scans.len() != 1 {
        let dump = Command::new("tcpdump")
            .args(["-n", "-r", file])
            .output()
            .unwrap();
        panic!(
            "not exactly one scan line: {events:#?}\ncapture:\n{}",
            String::from_utf8_lossy(&dump.stdout)
        );
    }
    let at = scans[0];
    let ports: Vec<u16> = scan
        .captures(&events[at])
        .unwrap_or_else(|| panic!("not B -> A: {}", events[at]))[1]
        .split(',')
        .map(|p| p.parse().unwrap())
        .collect();

    // Every other line is a SYN of B to one of A's scanned ports.
    let attempt = Regex::new(&format!(
        r"^New connection: {}:\d+ -> {}:(\d+)$",
        regex::escape(&b.to_string()),
        regex::escape(&a.to_string())
    ))
    .unwrap();
    let port_of = |e: &String| -> u16 {
        attempt
            .captures(e)
            .unwrap_or_else(|| panic!("unexpected line: {e}"))[1]
            .parse()
            .unwrap()
    };
    let mut scanned: Vec<u16> = events
        .iter()
        .enumerate()
        .filter(|&(i, _)| i != at)
        .map(|(_, e)| port_of(e))
        .collect();
    // The scan line lists the distinct ports seen up to it (all within the
    // window: nmap -T4 takes well under a second), ascending, and comes
    // right after the 4th distinct port.
    let mut before: Vec<u16> = events[..at].iter().map(port_of).collect();
    before.sort();
    before.dedup();
    assert_eq!(ports, before, "{events:#?}");
    assert_eq!(ports.len(), 4, "{events:#?}");
    scanned.sort();
    scanned.dedup();
    assert_eq!(scanned, (20..=30).collect::<Vec<u16>>(), "{events:#?}");

    // Same bytes every time, in both formats.
    assert_eq!(replay(&[file]), stdout);
    let json = replay(&[file, "--format", "json"]);
    assert_eq!(replay(&[file, "--format", "json"]), json);
    let scan_json: Vec<serde_json::Value> = json
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .filter(|v: &serde_json::Value| v["event"] == "port_scan")
        .collect();
    assert_eq!(scan_json.len(), 1);
    assert_eq!(scan_json[0]["ports"], serde_json::json!(ports));
    assert_eq!(scan_json[0]["src"], b.to_string());
}

/// Saves host A's /proc/net/tcp and tcp6 as `<dir>/<name>.tcp` and `.tcp6`.
fn snapshot(lab: &Lab, dir: &Path, name: &str) -> Vec<PathBuf> {
    ["tcp", "tcp6"]
        .iter()
        .map(|table| {
            let text = lab.output(A, "cat", &[&format!("/proc/net/{table}")]);
            let path = dir.join(format!("{name}.{table}"));
            std::fs::write(&path, text).unwrap();
            path
        })
        .collect()
}

#[test]
fn replay_of_snapshots_reproduces_the_live_agents_lines() {
    let Some(lab) = lab() else { return };
    let dir = tempfile::tempdir().unwrap();
    let _servers = lab.serve(A, Listen::Dual, &[8080, 8081, 8082, 8083]);
    let _remote = lab.serve(B, Listen::V4, &[7000]);
    let agent = Agent::start(&lab, A, &Args::run());
    let mut files = snapshot(&lab, dir.path(), "s0");
    let (a4, b4): (IpAddr, IpAddr) = (lab.v4(A).into(), lab.v4(B).into());
    let a6: IpAddr = lab.v6(A).into();

    // Inbound IPv4 (through the dual-stack listener, so in tcp6 as
    // ::ffff:a.b.c.d), outbound IPv4, inbound IPv6, then the three ports
    // that make B's IPv4 address a scanner of A's.
    let mut clients = Vec::new();
    let steps: [(usize, IpAddr, &[u16]); 4] = [
        (B, a4, &[8080]),
        (A, b4, &[7000]),
        (B, a6, &[8080]),
        (B, a4, &[8081, 8082, 8083]),
    ];
    let mut expected = Vec::new();
    for (n, (from, to, ports)) in steps.into_iter().enumerate() {
        let client = lab.connect(from, to, ports, None);
        for (local, port) in client.locals.iter().zip(ports) {
            let event = new_connection(*local, at(to, *port));
            agent.expect_event(&event, Duration::from_secs(5));
            expected.push(event);
        }
        clients.push(client);
        files.extend(snapshot(&lab, dir.path(), &format!("s{}", n + 1)));
    }
    let scan = port_scan(b4, a4, &[8080, 8081, 8082, 8083]);
    agent.expect_event(&scan, Duration::from_secs(5));
    expected.push(scan);
    std::thread::sleep(SETTLE);
    let live = assert_exact_events(&agent.stop(), &expected);

    let args: Vec<&str> = files.iter().map(|p| p.to_str().unwrap()).collect();
    let mut replayed = events(&replay(&args));
    let mut live_sorted = live.clone();
    replayed.sort();
    live_sorted.sort();
    assert_eq!(replayed, live_sorted, "replay differs from the live agent");
    drop(clients);
}

/// The kernel hands NFLOG messages over in batches, at the latest after
/// 1 s (nfnetlink_log's flush timeout): a capture stopped sooner misses them.
const NFLOG_FLUSH: Duration = Duration::from_millis(1500);

/// `tcpdump ARGS... -w FILE` in host `index`, once it listens.
///
/// Immediate mode: without it packets wait in the kernel's ring for up to a
/// second, and a SIGINT before then loses them; -U writes each packet to
/// the file at once. Immediate mode makes libpcap use a ring of one slot
/// per snapshot length: with the default 262,144 bytes and 2 MiB, eight
/// frames, and the back-to-back fragments of `nmap -f` overflow it. A
/// 1,500-byte snapshot (every packet of these tests whole) in 8 MiB holds
/// thousands; [`stop_recording`] checks that the kernel dropped none. NFLOG
/// has no ring: libpcap reads each batch of the kernel's messages into a
/// buffer of the snapshot length, and a short one cuts the batch (tcpdump
/// shows `[|nflog]`): it keeps the default.
fn record(lab: &Lab, index: usize, file: &Path, args: &[&str]) -> crate::proc::Proc {
    let mut all = args.to_vec();
    if !args.iter().any(|a| a.starts_with("nflog")) {
        all.extend(["-s", "1500", "-B", "8192"]);
    }
    all.extend(["-n", "--immediate-mode", "-U", "-w", file.to_str().unwrap()]);
    let tcpdump = lab.spawn(index, "tcpdump", &all);
    assert!(
        tcpdump.wait_for_stderr("listening on", HELPER_TIMEOUT),
        "tcpdump {args:?} did not start: {}",
        tcpdump.stderr()
    );
    tcpdump
}

fn stop_recording(tcpdump: crate::proc::Proc) {
    tcpdump.signal("INT");
    let done = tcpdump.finish(Duration::from_secs(5));
    assert!(done.stderr.contains("packets captured"), "{}", done.stderr);
    assert!(
        !done.stderr.contains("\n0 packets captured"),
        "{}",
        done.stderr
    );
    assert!(
        done.stderr.contains("\n0 packets dropped by kernel"),
        "the capture is incomplete: {}",
        done.stderr
    );
}

/// The event texts of `replay FILE`, sorted: captures of the same packets
/// taken in different places may order two packets of the same instant
/// differently.
fn replayed(file: &Path) -> Vec<String> {
    events(&replay(&[file.to_str().unwrap()]))
}

/// Rewrites the Ethernet capture `from` as `linktype` (101: raw IP, 0: BSD
/// loopback), each frame's IP packet behind the header `header` makes:
/// the formats no tool here captures in.
fn rewrite(from: &Path, to: &Path, linktype: u32, header: impl Fn(&[u8]) -> Vec<u8>) {
    use pcap_file::pcap::{PcapHeader, PcapPacket, PcapReader, PcapWriter};
    let mut reader = PcapReader::new(std::fs::File::open(from).unwrap()).unwrap();
    let out = std::fs::File::create(to).unwrap();
    let pcap_header = PcapHeader {
        datalink: pcap_file::DataLink::from(linktype),
        ..reader.header()
    };
    let mut writer = PcapWriter::with_header(out, pcap_header).unwrap();
    while let Some(packet) = reader.next_packet() {
        let packet = packet.unwrap();
        let data = &packet.data()[14..];
        let framed = header(data);
        let len = framed.len() as u32;
        writer
            .write_packet(&PcapPacket::new(packet.timestamp(), len, &framed).unwrap())
            .unwrap();
    }
}

/// What A's kernel sees and answers of three scans by B: an nmap FIN scan
/// of A's IPv4 address, a fragmented SYN scan (`nmap -f`) of a second IPv4
/// address of A, a UDP scan of A's IPv6 address (seen in A's port
/// unreachables). Captured at once on A's eth0 (Ethernet), on `any` as
/// Linux cooked v1 and v2, and through `iptables -j NFLOG` (NFLOG); raw IP
/// and BSD loopback versions are written from the Ethernet one. Each
/// replays to the same lines: one scan line of each kind, and the
/// fragmented SYNs' connection lines.
#[test]
fn replay_of_every_capture_format_prints_what_the_plain_capture_does() {
    let Some(lab) = Lab::needing(&["nmap", "tcpdump", "iptables", "ip6tables"], 2) else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let path = |name: &str| dir.path().join(name);
    let a2 = {
        let o = lab.v4(A).octets();
        std::net::Ipv4Addr::new(o[0], o[1], o[2], 200)
    };
    lab.output(
        A,
        "ip",
        &["addr", "add", &format!("{a2}/24"), "dev", "eth0"],
    );
    for tool in ["iptables", "ip6tables"] {
        for chain in ["INPUT", "OUTPUT"] {
            lab.output(A, tool, &["-A", chain, "-j", "NFLOG", "--nflog-group", "5"]);
        }
    }
    let captures = [
        record(&lab, A, &path("eth0.pcap"), &["-i", "eth0"]),
        record(
            &lab,
            A,
            &path("sll.pcap"),
            &["-i", "any", "-y", "LINUX_SLL"],
        ),
        record(
            &lab,
            A,
            &path("sll2.pcap"),
            &["-i", "any", "-y", "LINUX_SLL2"],
        ),
        record(&lab, A, &path("nflog.pcap"), &["-i", "nflog:5"]),
    ];
    let (a4, a6) = (lab.v4(A).to_string(), lab.v6(A).to_string());
    let a2 = a2.to_string();
    for args in [
        vec!["-sF", &a4],
        vec!["-f", "-sS", &a2],
        vec!["-sU", "-6", &a6],
    ] {
        let mut all = vec!["-n", "-Pn", "-T4", "-p", "20-30"];
        all.extend(args);
        lab.output(B, "nmap", &all);
    }
    std::thread::sleep(NFLOG_FLUSH);
    for tcpdump in captures {
        stop_recording(tcpdump);
    }
    rewrite(&path("eth0.pcap"), &path("raw.pcap"), 101, |ip| ip.to_vec());
    rewrite(&path("eth0.pcap"), &path("null.pcap"), 0, |ip| {
        let family: u32 = if ip[0] >> 4 == 6 { 30 } else { 2 };
        [&family.to_le_bytes()[..], ip].concat()
    });

    let plain = replayed(&path("eth0.pcap"));
    let (b4, b6) = (lab.v4(B).to_string(), lab.v6(B).to_string());
    let scan = |target: &str, suffix: &str| {
        Regex::new(&format!(
            r"^Port scan detected: {} -> {} on ports \d+(,\d+){{3}}{}$",
            regex::escape(if target.contains(':') { &b6 } else { &b4 }),
            regex::escape(target),
            regex::escape(suffix)
        ))
        .unwrap()
    };
    for (target, suffix) in [(&a4, " (FIN scan)"), (&a2, ""), (&a6, " (UDP scan)")] {
        let re = scan(target, suffix);
        let n = plain.iter().filter(|l| re.is_match(l)).count();
        assert_eq!(n, 1, "{target}{suffix}: {plain:#?}");
    }
    let fragmented = Regex::new(&format!(
        r"^New connection: {}:\d+ -> {}:(\d+)$",
        regex::escape(&b4),
        regex::escape(&a2)
    ))
    .unwrap();
    let mut ports: Vec<u16> = plain
        .iter()
        .filter_map(|l| fragmented.captures(l).map(|c| c[1].parse().unwrap()))
        .collect();
    ports.sort();
    assert_eq!(ports, (20..=30).collect::<Vec<u16>>(), "{plain:#?}");
    assert_eq!(plain.len(), 3 + 11, "{plain:#?}");

    let mut want = plain.clone();
    want.sort();
    for name in [
        "sll.pcap",
        "sll2.pcap",
        "nflog.pcap",
        "raw.pcap",
        "null.pcap",
    ] {
        let mut got = replayed(&path(name));
        got.sort();
        assert_eq!(got, want, "{name} differs from the Ethernet capture");
    }
}

/// B scans three hosts, each captured on its own link type (A's eth0,
/// Ethernet; C's `any`, Linux cooked v2; D through `iptables -j NFLOG`,
/// NFLOG); mergecap makes one pcapng of three interfaces of them. Its
/// replay prints what the three files print.
#[test]
fn replay_of_a_merged_pcapng_reads_every_interface() {
    let Some(lab) = Lab::needing(&["nmap", "tcpdump", "iptables", "mergecap"], 4) else {
        return;
    };
    const D: usize = 3;
    let dir = tempfile::tempdir().unwrap();
    let path = |name: &str| dir.path().join(name);
    lab.output(
        D,
        "iptables",
        &["-A", "INPUT", "-j", "NFLOG", "--nflog-group", "7"],
    );
    let captures = [
        record(&lab, A, &path("a.pcap"), &["-i", "eth0"]),
        record(&lab, C, &path("c.pcap"), &["-i", "any", "-y", "LINUX_SLL2"]),
        record(&lab, D, &path("d.pcap"), &["-i", "nflog:7"]),
    ];
    let targets = [
        ("-sS", lab.v4(A).to_string()),
        ("-sX", lab.v4(C).to_string()),
        ("-sF", lab.v4(D).to_string()),
    ];
    for (kind, target) in &targets {
        lab.output(
            B,
            "nmap",
            &["-n", "-Pn", "-T4", "-p", "20-30", kind, target],
        );
    }
    std::thread::sleep(NFLOG_FLUSH);
    for tcpdump in captures {
        stop_recording(tcpdump);
    }
    let merged = path("merged.pcapng");
    let files = [path("a.pcap"), path("c.pcap"), path("d.pcap")];
    let mut args = vec!["-w", merged.to_str().unwrap()];
    args.extend(files.iter().map(|f| f.to_str().unwrap()));
    let out = Command::new("mergecap").args(&args).output().unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let described = Command::new("capinfos").arg(&merged).output();
    if let Ok(described) = described {
        let text = String::from_utf8_lossy(&described.stdout);
        assert!(text.contains("Number of interfaces in file: 3"), "{text}");
    }

    let mut want: Vec<String> = files.iter().flat_map(|f| replayed(f)).collect();
    let mut got = replayed(&merged);
    for (label, lines) in [("separate", &want), ("merged", &got)] {
        let scans: Vec<&String> = lines
            .iter()
            .filter(|l| l.starts_with("Port scan"))
            .collect();
        assert_eq!(scans.len(), 3, "{label}: {lines:#?}");
        for (suffix, (_, target)) in ["", " (Xmas scan)", " (FIN scan)"].iter().zip(&targets) {
            let kind_ok = |l: &str| {
                if suffix.is_empty() {
                    !l.ends_with(')')
                } else {
                    l.ends_with(suffix)
                }
            };
            let found = scans
                .iter()
                .any(|l| l.contains(&format!(" -> {target} on ports ")) && kind_ok(l));
            assert!(found, "{label}: no scan of {target}{suffix}: {lines:#?}");
        }
    }
    want.sort();
    got.sort();
    assert_eq!(got, want);
}
