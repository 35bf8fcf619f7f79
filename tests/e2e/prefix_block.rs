//! IPv6 prefixes (`--ipv6-prefix`, default 64): a scanner that sends each
//! probe from a new address of its /64 is reported once, naming the /64,
//! and the /64 is blocked whole in each backend's kernel object (the nft
//! interval set, the ipset `hash:net`, the XDP program's LPM trie); a
//! further probe from yet another address of the /64 is dropped.
//!
//! The lab's hosts share one /64; the scanner's is another one, routed by A
//! through B (B holds its addresses, added without duplicate address
//! detection so they are usable at once).

use crate::agent::*;
use crate::inspect::nft_set;
use crate::lab::*;
use crate::prereq::require_xdp_program;
use crate::proc::{nsenter, stdout_of};
use ipnet::{IpNet, Ipv6Net};
use std::net::{IpAddr, Ipv6Addr};
use std::time::Duration;

const EVENT: Duration = Duration::from_secs(5);
/// Probes, each from its own address and to its own port.
const PROBES: u16 = 20;
const FIRST_PORT: u16 = 8101;
/// A port the scan does not touch, used to probe whether SYNs get through.
const PROBE: u16 = 9000;

/// The scanner's /64: the lab's /64 with its fourth group set to 0x77.
fn scanner_net(lab: &Lab) -> Ipv6Net {
    let mut groups = lab.v6(B).segments();
    groups[3] = 0x77;
    groups[4..].fill(0);
    Ipv6Net::new(Ipv6Addr::from(groups), 64).unwrap()
}

/// Address number `n` of the scanner's /64.
fn scanner_addr(lab: &Lab, n: u16) -> Ipv6Addr {
    let mut groups = scanner_net(lab).network().segments();
    groups[7] = n;
    Ipv6Addr::from(groups)
}

/// Gives B the addresses 1..=count of the scanner's /64 and has A route the
/// /64 through B.
fn add_scanner_net(lab: &Lab, count: u16) {
    for n in 1..=count {
        let addr = format!("{}/64", scanner_addr(lab, n));
        let out = lab.run(
            B,
            "ip",
            &["-6", "addr", "add", &addr, "dev", "eth0", "nodad"],
        );
        assert!(out.status.success(), "ip addr add {addr}: {out:?}");
    }
    let net = scanner_net(lab).to_string();
    let via = lab.v6(B).to_string();
    let out = lab.run(A, "ip", &["-6", "route", "add", &net, "via", &via]);
    assert!(out.status.success(), "ip route add {net}: {out:?}");
}

/// One connection attempt per port from B to `host`, each from the next of
/// `sources`, 50 ms apart; an attempt is its SYN (the answer is not waited
/// for beyond 0.3 s).
fn rotate(lab: &Lab, sources: &[Ipv6Addr], host: IpAddr, ports: &[u16]) {
    let script = "import socket,sys,time\n\
        host=sys.argv[1]\n\
        for pair in sys.argv[2:]:\n\
        \x20   src,port=pair.split(',')\n\
        \x20   s=socket.socket(socket.AF_INET6,socket.SOCK_STREAM)\n\
        \x20   s.bind((src,0))\n\
        \x20   s.settimeout(0.3)\n\
        \x20   try: s.connect((host,int(port)))\n\
        \x20   except OSError: pass\n\
        \x20   s.close()\n\
        \x20   time.sleep(0.05)\n";
    let pairs: Vec<String> = sources
        .iter()
        .zip(ports)
        .map(|(src, port)| format!("{src},{port}"))
        .collect();
    let host = host.to_string();
    let mut args = vec!["-c", script, &host];
    args.extend(pairs.iter().map(String::as_str));
    let out = lab.run(B, "python3", &args);
    assert!(out.status.success(), "the rotating scan failed: {out:?}");
}

/// One connection from B's `src` to `host:port` (2 s timeout); `Err`
/// (python's message) when it fails: a dropped SYN says "timed out".
fn try_connect_from(lab: &Lab, src: Ipv6Addr, host: IpAddr, port: u16) -> Result<(), String> {
    let script = "import socket,sys\n\
        socket.create_connection((sys.argv[1], int(sys.argv[2])), timeout=2, source_address=(sys.argv[3], 0)).close()";
    let out = lab.run(
        B,
        "python3",
        &[
            "-c",
            script,
            &host.to_string(),
            &port.to_string(),
            &src.to_string(),
        ],
    );
    if out.status.success() {
        Ok(())
    } else {
        Err(String::from_utf8_lossy(&out.stderr).into_owned())
    }
}

/// The blocklist map `name` an agent pinned, dumped as JSON by bpftool in
/// the agent's mount namespace.
fn pinned_dump(pid: u32, name: &str) -> serde_json::Value {
    let path = format!("/sys/fs/bpf/tcpwatch/{name}");
    let text = stdout_of(
        nsenter(
            pid,
            &["-m"],
            &["bpftool", "-j", "map", "dump", "pinned", &path],
        ),
        &format!("bpftool map dump pinned {path}"),
    );
    serde_json::from_str(&text).unwrap_or_else(|e| panic!("bpftool printed {text}: {e}"))
}

/// The prefixes of an LPM trie dump (`{"key": {"len": L, "addr": [..]}}`).
fn trie_prefixes(dump: &serde_json::Value) -> Vec<IpNet> {
    let entries = dump.as_array().map(Vec::as_slice).unwrap_or(&[]);
    entries
        .iter()
        .filter_map(|e| {
            let key = e.get("formatted").unwrap_or(e).get("key")?;
            let len = u8::try_from(key["len"].as_u64()?).ok()?;
            let bytes: Vec<u8> = key["addr"]
                .as_array()?
                .iter()
                .map(|b| b.as_u64().and_then(|b| u8::try_from(b).ok()))
                .collect::<Option<_>>()?;
            let addr: IpAddr = match bytes.len() {
                4 => <[u8; 4]>::try_from(bytes).ok()?.into(),
                16 => <[u8; 16]>::try_from(bytes).ok()?.into(),
                _ => return None,
            };
            IpNet::new(addr, len).ok()
        })
        .collect()
}

/// The kernel holds `net` as one block of `backend` (its listing read in A
/// or, for xdp, the agent's pinned trie).
fn kernel_holds(lab: &Lab, agent: &Agent, backend: &str, net: Ipv6Net) -> Result<(), String> {
    let shown = net.to_string();
    match backend {
        "nftables" => {
            let set = nft_set(lab, "blocked6");
            (set.contains(&format!("{shown} timeout 1h"))
                || set.contains(&format!("{shown} counter")))
            .then_some(())
            .ok_or(set)
        }
        "iptables" => {
            let set = lab.output(A, "ipset", &["list", "tcpwatch6"]);
            set.lines()
                .any(|l| l.starts_with(&format!("{shown} timeout ")))
                .then_some(())
                .ok_or(set)
        }
        "xdp" => {
            let dump = pinned_dump(agent.pid(), "blocked_nets6");
            trie_prefixes(&dump)
                .contains(&IpNet::V6(net))
                .then_some(())
                .ok_or(dump.to_string())
        }
        other => panic!("no backend {other}"),
    }
}

fn case(backend: &str, source: Source) {
    let tools: &[&str] = match backend {
        "nftables" => &["nft"],
        "iptables" => &["ipset", "ip6tables"],
        _ => &["bpftool", "nsenter"],
    };
    if source == Source::Xdp && !require_xdp_program() {
        return;
    }
    let Some(lab) = Lab::needing(tools, 3) else {
        return;
    };
    let ports: Vec<u16> = (FIRST_PORT..FIRST_PORT + PROBES).collect();
    let mut served = ports.clone();
    served.push(PROBE);
    let _server = lab.serve(A, Listen::Dual, &served);
    add_scanner_net(&lab, PROBES + 1);
    let args = Args::run()
        .source(source)
        .interface("eth0")
        .block(backend)
        .block_ttl("1h")
        // The harness counts per address (the lab's hosts share a /64).
        .set("--ipv6-prefix", "64");
    let agent = Agent::start(&lab, A, &args);
    let host: IpAddr = lab.v6(A).into();
    let net = scanner_net(&lab);
    let sources: Vec<Ipv6Addr> = (1..=PROBES).map(|n| scanner_addr(&lab, n)).collect();

    rotate(&lab, &sources, host, &ports);
    let scan = format!(
        "Port scan detected: {net} -> {host} on ports {}",
        ports[..4]
            .iter()
            .map(u16::to_string)
            .collect::<Vec<_>>()
            .join(",")
    );
    agent.expect_event(&scan, EVENT);
    agent.expect_event(&format!("Blocked {net} for 1h via {backend}"), EVENT);

    // In the kernel as the /64.
    let mut last = String::new();
    let held = within(Duration::from_secs(3), || {
        match kernel_holds(&lab, &agent, backend, net) {
            Ok(()) => true,
            Err(text) => {
                last = text;
                false
            }
        }
    });
    assert!(held, "{net} is not blocked whole via {backend}: {last}");

    // Another address of the /64, never used yet, is dropped; a bystander
    // still connects.
    let fresh = scanner_addr(&lab, PROBES + 1);
    let err = try_connect_from(&lab, fresh, host, PROBE)
        .expect_err("a new address of the /64 still connects");
    assert!(err.contains("timed out"), "not a dropped SYN: {err}");
    lab.try_connect(C, host, PROBE)
        .expect("a bystander is blocked too");

    // One scan line, one block, whatever the 20 probes and the new address.
    let finished = agent.stop();
    assert_eq!(finished.status.code(), Some(0), "{}", finished.stderr);
    let texts = event_texts(&finished.stdout);
    let scans: Vec<&String> = texts
        .iter()
        .filter(|t| t.starts_with("Port scan"))
        .collect();
    let blocks: Vec<&String> = texts.iter().filter(|t| t.starts_with("Blocked")).collect();
    assert_eq!(scans, [&scan], "{texts:#?}");
    assert_eq!(blocks.len(), 1, "{texts:#?}");
}

test_rows!(case {
    rotating_v6_scanner_is_blocked_as_its_64_in_nftables: "nftables", Source::Pcap;
    rotating_v6_scanner_is_blocked_as_its_64_in_ipset: "iptables", Source::Pcap;
    rotating_v6_scanner_is_blocked_as_its_64_in_xdp: "xdp", Source::Xdp;
});
