//! The `xdp` source against what real scanners send besides SYNs: its row
//! of the table in [`crate::probes`] (nmap's and masscan's stealth, UDP and
//! fragmented scans, IPv6 extension headers, a scanner rotating addresses
//! in its /64, ordinary traffic that must print nothing and cost no
//! report); and here, an IPv6 first fragment, and spoofed SYN floods (from
//! hping3, and from benches/xdpgen at 120,000 SYN/s as XDP frames, the way
//! a NIC delivers) whose every SYN the program saw is accounted for
//! (printed, or counted lost).
//!
//! What the program reports is read from its own counters (`reported`,
//! `lost`) with bpftool while it runs.
//!
//! Through xdp, a probe that is not a whole SYN (FIN, NULL, Xmas, a first
//! fragment cut before the flags, a UDP probe seen in A's port unreachable)
//! counts toward a scan and prints no line of its own.

use crate::agent::*;
use crate::lab::*;
use crate::probes::{counters, syn6, XDP};
use std::time::Duration;

probe_tests!(crate::probes::XDP);

/// A SYN split in two IPv6 fragments, the flags in the second: the first
/// holds the ports, and counts as a SYN probe (no line of its own).
#[test]
fn an_ipv6_first_fragment_counts_toward_a_scan() {
    let Some(lab) = crate::probes::lab(&XDP, &[], 2) else {
        return;
    };
    let agent = Agent::watching(&lab, Source::Xdp);
    syn6(
        &lab,
        &[
            "7101:split",
            "7102:dst+split",
            "7103:hbh+split",
            "7104:split",
        ],
    );
    let expected = [port_scan(
        lab.v6(B).into(),
        lab.v6(A).into(),
        &[7101, 7102, 7103, 7104],
    )];
    agent.expect_exactly(&expected, Duration::from_secs(5), XDP.quiet);
}

/// A's eth0 receive counter (packets).
fn rx_packets(lab: &Lab) -> u64 {
    let text = lab.output(A, "cat", &["/sys/class/net/eth0/statistics/rx_packets"]);
    text.trim().parse().unwrap()
}

/// Waits until the agent's count of lines stops growing.
fn drained(agent: &Agent) {
    let mut printed = agent.stdout_lines().len();
    loop {
        std::thread::sleep(Duration::from_millis(500));
        let now = agent.stdout_lines().len();
        if now == printed {
            break;
        }
        printed = now;
    }
}

/// Once a flood is over and the agent has drained it: what the program
/// reported and lost since `before` (its counters then), and the lines the
/// stopped agent printed.
fn tally(lab: &Lab, agent: Agent, before: (u64, u64)) -> (u64, u64, u64) {
    drained(&agent);
    let (reported, lost) = counters(lab, A);
    let finished = agent.stop();
    let lines = finished
        .stdout
        .iter()
        .filter(|l| l.contains("New connection: "))
        .count() as u64;
    (reported - before.0, lost - before.1, lines)
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
    let (reported, lost, lines) = tally(&lab, agent, (reported0, lost0));
    let received = rx_packets(&lab) - rx0;
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

/// benches/xdpgen built with clang and libbpf into the test's directory, or
/// `None` after reporting what is missing.
fn xdpgen() -> Option<std::path::PathBuf> {
    let dir = std::path::Path::new(env!("CARGO_TARGET_TMPDIR")).join("xdpgen");
    let src = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("benches/xdpgen");
    if !std::path::Path::new("/usr/include/bpf/libbpf.h").exists() {
        crate::prereq::missing_prerequisite("libbpf-dev (scripts/install-deps.sh installs it)");
        return None;
    }
    std::fs::create_dir_all(&dir).unwrap();
    let multiarch = std::process::Command::new("clang")
        .arg("-print-multiarch")
        .output()
        .expect("clang");
    let include = format!(
        "-I/usr/include/{}",
        String::from_utf8_lossy(&multiarch.stdout).trim()
    );
    let bpf = src.join("redirect.bpf.c");
    let obj = dir.join("redirect.bpf.o");
    let gen = dir.join("xdpgen");
    let gen_src = src.join("xdpgen.c");
    let mut bpf_build = std::process::Command::new("clang");
    bpf_build
        .args(["-O2", "-g", "-target", "bpf", "-mcpu=v3", &include, "-c"])
        .arg(&bpf)
        .arg("-o")
        .arg(&obj);
    let mut gen_build = std::process::Command::new("clang");
    gen_build
        .args(["-O2", "-o"])
        .arg(&gen)
        .arg(&gen_src)
        .args(["-lbpf", "-lpthread"]);
    for mut build in [bpf_build, gen_build] {
        let built = build.output().unwrap();
        assert!(
            built.status.success(),
            "{build:?}: {}",
            String::from_utf8_lossy(&built.stderr)
        );
    }
    Some(gen)
}

/// A counter of `ethtool -S eth0`-like output of `port` in the switch.
fn switch_stat(lab: &Lab, port: &str, name: &str) -> u64 {
    let out = std::process::Command::new("ip")
        .args(["netns", "exec", lab.switch_ns(), "ethtool", "-S", port])
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    text.lines()
        .find_map(|l| l.trim().strip_prefix(name)?.strip_prefix(':'))
        .unwrap_or_else(|| panic!("no {name} in {text}"))
        .trim()
        .parse()
        .unwrap()
}

/// A 3 s spoofed SYN flood at 120,000 SYN/s, each from a source of its own,
/// sent by benches/xdpgen out of A's bridge port as XDP frames (A's eth0
/// receives them in its native XDP path, as from a NIC): every frame sent
/// is a SYN the program saw, and each is a line or a counted loss.
#[test]
fn an_xdp_frame_flood_is_accounted_for() {
    if !Source::Xdp.available() {
        return;
    }
    let Some(lab) = Lab::alone(&["bpftool", "clang", "ethtool"], 2) else {
        return;
    };
    let Some(gen) = xdpgen() else { return };
    const FRAMES: u64 = 360_000;
    // A spare interface for xdpgen -A (keeps its program in the kernel's XDP
    // dispatcher, so the pacing is smooth), left down.
    let sw = lab.switch_ns();
    ip_ok(&[
        "-n", sw, "link", "add", "xg0", "type", "veth", "peer", "name", "xg1",
    ]);
    let a_mac = lab.output(A, "cat", &["/sys/class/net/eth0/address"]);
    let agent = Agent::watching(&lab, Source::Xdp);
    let (reported0, lost0) = counters(&lab, A);
    let xmit0 = switch_stat(&lab, "p1", "tx_queue_0_xdp_xmit");
    let (a, b) = (lab.v4(A).to_string(), lab.v4(B).to_string());
    let frames = FRAMES.to_string();
    let sent = std::process::Command::new("ip")
        .args(["netns", "exec", sw])
        .arg(&gen)
        .args([
            "-i", "p1", "-A", "xg0", "-k", "syn", "-R", "-S", "0", "-r", "120000",
        ])
        .args([
            "-n",
            &frames,
            "-s",
            &b,
            "-d",
            &a,
            "-M",
            a_mac.trim(),
            "-P",
            "8080",
        ])
        .output()
        .unwrap();
    let line = String::from_utf8_lossy(&sent.stdout);
    assert!(
        sent.status.success(),
        "xdpgen: {line}{}",
        String::from_utf8_lossy(&sent.stderr)
    );
    let (reported, lost, lines) = tally(&lab, agent, (reported0, lost0));
    let xmit = switch_stat(&lab, "p1", "tx_queue_0_xdp_xmit") - xmit0;
    eprintln!(
        "xdpgen flood: {}; p1 sent {xmit} XDP frames; the program reported {reported}, lost {lost}; {lines} lines ({:.2} %)",
        line.trim(),
        100.0 * lines as f64 / (reported + lost).max(1) as f64
    );
    assert_eq!(
        xmit, FRAMES,
        "every frame left A's bridge port as an XDP frame"
    );
    assert_eq!(lines, reported, "every record the ring took is a line");
    assert_eq!(reported + lost, FRAMES, "the program saw every SYN sent");
}
