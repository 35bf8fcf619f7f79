//! Spoofing resistance: a SYN scan whose source address is forged must
//! never get the host's gateway, the host itself or an `--allow`ed peer
//! blocked, and `--max-blocks-per-minute` bounds how many forged addresses
//! a flood of fake scans can get blocked.
//!
//! Host A runs the agent (`--source pcap`, which sees half-open SYNs, and
//! `--block nftables`) with default routes via host R (IPv4 and IPv6); host
//! S forges SYNs to four closed ports of A with `hping3 -a` (IPv4) and a raw
//! IPv6 socket (hping3 has no IPv6). Every packet stays on the lab's bridge;
//! every firewall object is in A's namespace.

use crate::agent::*;
use crate::inspect::{lists, nft_set, sample};
use crate::lab::*;
use std::net::IpAddr;
use std::time::Duration;

/// The gateway.
const R: usize = B;
/// The spoofer.
const S: usize = C;
const EVENT: Duration = Duration::from_secs(10);
const PORTS: [u16; 4] = [8001, 8002, 8003, 8004];
const METRICS: &str = "127.0.0.1:9472";

/// An address outside the lab given to `--allow`: pcap sees the forged
/// SYNs on A's interface before routing, so no route to it is needed.
const ALLOWED: &str = "192.0.2.7";

/// Sends one SYN to each of PORTS from the forged SRC (IPv6, raw socket
/// with the header included): `SRC DST FIRST_PORT COUNT`.
const SYN6: &str = r#"
import ipaddress, random, socket, struct, sys
src, dst = ipaddress.IPv6Address(sys.argv[1]), ipaddress.IPv6Address(sys.argv[2])
first, count = int(sys.argv[3]), int(sys.argv[4])
sock = socket.socket(socket.AF_INET6, socket.SOCK_RAW, socket.IPPROTO_RAW)
def checksum(data):
    total = sum(struct.unpack("!%dH" % (len(data) // 2), data))
    while total >> 16:
        total = (total & 0xFFFF) + (total >> 16)
    return ~total & 0xFFFF
for i in range(count):
    tcp = struct.pack("!HHIIBBHHH", 40000 + i, first + i, random.getrandbits(32), 0, 5 << 4, 0x02, 64240, 0, 0)
    pseudo = src.packed + dst.packed + struct.pack("!I3xB", len(tcp), socket.IPPROTO_TCP)
    tcp = tcp[:16] + struct.pack("!H", checksum(pseudo + tcp)) + tcp[18:]
    header = struct.pack("!IHBB", 6 << 28, len(tcp), socket.IPPROTO_TCP, 64) + src.packed + dst.packed
    sock.sendto(header + tcp, (str(dst), 0))
"#;

/// A three-host lab whose host A routes everything via host R, or `None`
/// (skipped, or failed under CI) without the tools.
fn lab() -> Option<Lab> {
    let lab = Lab::needing(&["hping3", "nft", "curl"], 3)?;
    let (gw4, gw6) = (lab.v4(R).to_string(), lab.v6(R).to_string());
    lab.output(A, "ip", &["route", "add", "default", "via", &gw4]);
    lab.output(A, "ip", &["-6", "route", "add", "default", "via", &gw6]);
    Some(lab)
}

/// pcap on A's eth0, blocking with nftables for 30 s, metrics on.
fn args() -> Args {
    Args::watching(Source::Pcap)
        .block("nftables")
        .block_ttl("30s")
        .metrics(METRICS)
}

/// Host S sends one SYN from the forged `src` to each of [`PORTS`] of A.
fn forge_scan(lab: &Lab, src: IpAddr) {
    let target = lab.addr_like(A, src).to_string();
    let (src, first, count) = (
        src.to_string(),
        PORTS[0].to_string(),
        PORTS.len().to_string(),
    );
    let out = match src.contains(':') {
        false => lab.run(
            S,
            "hping3",
            &[
                "-q",
                "-S",
                "-a",
                &src,
                "-p",
                &format!("++{first}"),
                "-c",
                &count,
                "-i",
                "u20000",
                &target,
            ],
        ),
        true => lab.run(S, "python3", &["-c", SYN6, &src, &target, &first, &count]),
    };
    // hping3 exits 1 when nothing answers (a forged source never hears the
    // replies); only a failure to send is an error.
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        out.status.code().is_some_and(|c| c <= 1) && !stderr.contains("rror"),
        "forging SYNs from {src} failed: {out:?}"
    );
}

/// Forges a scan from `src` and waits for the agent's scan line.
fn scan_from(lab: &Lab, agent: &Agent, src: IpAddr) -> String {
    forge_scan(lab, src);
    let scan = port_scan(src, lab.addr_like(A, src), &PORTS);
    agent.expect_event(&scan, EVENT);
    scan
}

/// The value of one series on A's metrics endpoint.
fn metric(lab: &Lab, series: &str) -> Option<f64> {
    let out = lab.run(A, "curl", &["-sf", &format!("http://{METRICS}/metrics")]);
    sample(&String::from_utf8_lossy(&out.stdout), series)
}

/// `series` on A's metrics endpoint reaches `value` within 5 s.
fn expect_metric(lab: &Lab, series: &str, value: f64) {
    assert!(
        within(Duration::from_secs(5), || metric(lab, series)
            == Some(value)),
        "{series} = {:?}",
        metric(lab, series)
    );
}

/// The event texts of `lines` other than `New connection` ones (every
/// forged SYN is one of those; they are not what is checked here).
fn decisions(lines: &[String]) -> Vec<String> {
    let events = event_texts(lines).into_iter();
    events
        .filter(|t| !t.starts_with("New connection: "))
        .collect()
}

fn blocked30(ip: IpAddr) -> String {
    blocked(ip, "30s", "nftables")
}

#[test]
fn forged_gateway_own_and_allowed_sources_are_reported_never_blocked() {
    let Some(lab) = lab() else { return };
    let agent = Agent::start(&lab, A, &args().set("--allow", ALLOWED));
    let ip = |s: &str| s.parse::<IpAddr>().unwrap();
    let protected: [(IpAddr, &str); 4] = [
        (lab.v4(R).into(), "a gateway of this host"),
        (lab.v6(R).into(), "a gateway of this host"),
        (lab.v4(A).into(), "an address of this host"),
        (ip(ALLOWED), "--allow 192.0.2.7/32"),
    ];
    // Positive controls: forged addresses nobody protects are blocked, so
    // the cases above could fail.
    let controls = [ip("198.51.100.23"), ip("2001:db8::23")];

    let mut expected = Vec::new();
    for (src, reason) in protected {
        expected.push(scan_from(&lab, &agent, src));
        let why = format!("tcpwatch: not blocking {src}: {reason}\n");
        agent.expect_stderr(&why, EVENT);
    }
    for src in controls {
        expected.push(scan_from(&lab, &agent, src));
        expected.push(blocked30(src));
        agent.expect_event(&blocked30(src), EVENT);
    }

    let (set4, set6) = (nft_set(&lab, "blocked4"), nft_set(&lab, "blocked6"));
    for (src, _) in protected {
        assert!(
            !lists(&set4, src) && !lists(&set6, src),
            "{src} blocked:\n{set4}{set6}"
        );
    }
    assert!(lists(&set4, controls[0]), "{set4}");
    assert!(lists(&set6, controls[1]), "{set6}");
    let skipped = "tcpwatch_blocks_skipped_total{reason=\"allowlist\"}";
    expect_metric(&lab, skipped, 4.0);

    let finished = agent.stop();
    assert_eq!(finished.status.code(), Some(0), "{}", finished.stderr);
    let got = decisions(&finished.stdout);
    assert_eq!(got, expected, "stderr: {}", finished.stderr);
}

#[test]
fn the_block_cap_reports_scans_over_it_without_blocking_them() {
    let Some(lab) = lab() else { return };
    let agent = Agent::start(&lab, A, &args().set("--max-blocks-per-minute", 2));
    let sources: Vec<IpAddr> = (31..=34)
        .map(|n| format!("198.51.100.{n}").parse().unwrap())
        .collect();
    let mut expected = Vec::new();
    for (i, src) in sources.iter().enumerate() {
        expected.push(scan_from(&lab, &agent, *src));
        if i < 2 {
            agent.expect_event(&blocked30(*src), EVENT);
            expected.push(blocked30(*src));
        }
    }
    let warning = format!(
        "tcpwatch: warning: block limit of 2 a minute reached; not blocking {} (1 skipped so far)\n",
        sources[2]
    );
    agent.expect_stderr(&warning, EVENT);
    let skipped = "tcpwatch_blocks_skipped_total{reason=\"rate_limit\"}";
    expect_metric(&lab, skipped, 2.0);
    let set4 = nft_set(&lab, "blocked4");
    for (i, src) in sources.iter().enumerate() {
        assert_eq!(lists(&set4, *src), i < 2, "{src}:\n{set4}");
    }

    let finished = agent.stop();
    assert_eq!(finished.status.code(), Some(0), "{}", finished.stderr);
    assert_eq!(decisions(&finished.stdout), expected, "{}", finished.stderr);
    assert_eq!(
        finished.stderr.matches("block limit of").count(),
        1,
        "one warning a minute: {}",
        finished.stderr
    );
}
