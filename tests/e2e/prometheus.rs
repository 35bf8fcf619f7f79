//! A real Prometheus (the Debian package) with the shipped alerting rules
//! (deploy/prometheus) scrapes two agents in a lab — A blocking with
//! nftables under a block rate cap, X with XDP — and after port scans:
//!
//! - fires the scan alert within its `for:` (shortened to [`FOR`]) and the
//!   rate-cap alert, and no other;
//! - answers every query of every panel of the Grafana dashboard
//!   (deploy/grafana) with data, for "All" and for both instances picked
//!   as Grafana writes them: no panel names a metric or label the agent
//!   does not export;
//! - fires the down alert once an agent stops.
//!
//! The static checks of the same files (promtool, the chart) are the
//! offline `rules` suite.

use crate::agent::*;
use crate::lab::*;
use crate::monitoring::{dashboard_queries, read, ALERTS, DASHBOARD, RULES};
use crate::prereq::require_xdp_program;
use crate::proc::Proc;
use serde_json::Value;
use std::collections::BTreeSet;
use std::net::{IpAddr, Ipv4Addr};
use std::time::{Duration, Instant};

/// The hosts: A and X run agents, B scans, P runs Prometheus.
const X: usize = 1;
const SCANNER: usize = 2;
const P: usize = 3;
const METRICS_PORT: u16 = 9472;
const PROMETHEUS: &str = "127.0.0.1:9090";
const PORTS: [u16; 4] = [8001, 8002, 8003, 8004];
/// A port no scan touches, to probe whether the scanner's SYNs get through.
const PROBE: u16 = 9000;
/// A's scanners: B's own address and four more on B's interface.
const SCANNERS: usize = 5;
/// A blocks at most this many a minute: the other scanners are skipped.
const CAP: usize = 3;
/// What the test gives every alert's `for:` instead of minutes.
const FOR: Duration = Duration::from_secs(10);

/// The rules file with every `for:` set to [`FOR`]; the expressions are
/// the shipped ones.
fn rules_with_short_for() -> String {
    read(RULES)
        .lines()
        .map(|line| match line.trim_start().strip_prefix("for: ") {
            Some(_) => format!(
                "{}for: {}s",
                &line[..line.len() - line.trim_start().len()],
                FOR.as_secs()
            ),
            None => line.to_string(),
        })
        .collect::<Vec<_>>()
        .join("\n")
        + "\n"
}

fn instance(lab: &Lab, index: usize) -> String {
    format!("{}:{METRICS_PORT}", lab.v4(index))
}

/// A GET of Prometheus' HTTP API from P, parsed; `None` while it does not
/// answer with JSON.
fn api(lab: &Lab, path_and_query: &str) -> Option<Value> {
    let url = format!("http://{PROMETHEUS}{path_and_query}");
    let out = lab.run(P, "curl", &["-sS", "--max-time", "5", &url]);
    serde_json::from_slice(&out.stdout).ok()
}

/// An instant query: its `data.result`, or panics with Prometheus' error.
fn query(lab: &Lab, promql: &str) -> Vec<Value> {
    let url = format!("http://{PROMETHEUS}/api/v1/query");
    let data = format!("query={promql}");
    let out = lab.run(
        P,
        "curl",
        &["-sS", "--max-time", "5", "--data-urlencode", &data, &url],
    );
    let answer: Value = serde_json::from_slice(&out.stdout).unwrap_or_else(|_| {
        panic!(
            "no JSON answer to {promql}: {}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        )
    });
    assert_eq!(answer["status"], "success", "{promql}: {answer}");
    answer["data"]["result"]
        .as_array()
        .cloned()
        .unwrap_or_default()
}

/// The alerts Prometheus holds now: (name, instance, state).
fn alerts(lab: &Lab) -> Vec<(String, String, String)> {
    let Some(answer) = api(lab, "/api/v1/alerts") else {
        return Vec::new();
    };
    let field = |v: &Value| v.as_str().unwrap_or("").to_string();
    answer["data"]["alerts"]
        .as_array()
        .into_iter()
        .flatten()
        .map(|a| {
            (
                field(&a["labels"]["alertname"]),
                field(&a["labels"]["instance"]),
                field(&a["state"]),
            )
        })
        .collect()
}

fn firing(lab: &Lab) -> BTreeSet<(String, String)> {
    alerts(lab)
        .into_iter()
        .filter(|(_, _, state)| state == "firing")
        .map(|(name, instance, _)| (name, instance))
        .collect()
}

fn last_lines(text: &str, n: usize) -> String {
    let lines: Vec<&str> = text.lines().collect();
    lines[lines.len().saturating_sub(n)..].join("\n")
}

/// Waits until `alert` fires for `instance`; how long after `since` it did.
fn wait_firing(
    lab: &Lab,
    prometheus: &Proc,
    alert: &str,
    instance: &str,
    since: Instant,
) -> Duration {
    let timeout = FOR + Duration::from_secs(30);
    let want = (alert.to_string(), instance.to_string());
    while !firing(lab).contains(&want) {
        assert!(
            since.elapsed() < timeout,
            "{alert} not firing for {instance} within {timeout:?}; alerts: {:?}\nprometheus: {}",
            alerts(lab),
            last_lines(&prometheus.stderr(), 5)
        );
        std::thread::sleep(Duration::from_millis(250));
    }
    since.elapsed()
}

/// An address on the scanner's subnet for extra scanner `n` (1-based).
fn extra_scanner(lab: &Lab, n: usize) -> Ipv4Addr {
    let [a, b, c, _] = lab.v4(SCANNER).octets();
    Ipv4Addr::new(a, b, c, 100 + n as u8)
}

/// From the scanner host: from each source address, one connection to
/// each of `PORTS` of `target`, all held open; returns once every one is
/// established.
fn scan_from(lab: &Lab, sources: &[Ipv4Addr], target: IpAddr) -> Proc {
    let script = "import socket,sys,time\n\
        held=[]\n\
        target=sys.argv[1]\n\
        ports=[int(p) for p in sys.argv[2].split(',')]\n\
        for src in sys.argv[3:]:\n\
        \x20   for port in ports:\n\
        \x20       s=socket.socket()\n\
        \x20       s.bind((src,0))\n\
        \x20       s.settimeout(5)\n\
        \x20       s.connect((target,port))\n\
        \x20       held.append(s)\n\
        print('connected',flush=True)\n\
        time.sleep(600)\n";
    let ports: Vec<String> = PORTS.iter().map(u16::to_string).collect();
    let mut args = vec![
        "-c".to_string(),
        script.to_string(),
        target.to_string(),
        ports.join(","),
    ];
    args.extend(sources.iter().map(Ipv4Addr::to_string));
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let scan = lab.spawn(SCANNER, "python3", &args);
    assert!(
        scan.wait_for(|l| l == "connected", HELPER_TIMEOUT)
            .is_some(),
        "scan of {target} failed: {}",
        scan.stderr()
    );
    scan
}

/// Grafana's text for a multi-value regex variable: the values with their
/// regex metacharacters escaped (as a PromQL string holds them), in a group.
/// Instances (`10.x.y.z:9472`) hold only one kind, the dots.
fn grafana_multi(values: &[String]) -> String {
    let escaped: Vec<String> = values.iter().map(|v| v.replace('.', "\\\\.")).collect();
    format!("({})", escaped.join("|"))
}

/// A dashboard query as Grafana sends it, with `instance` set to `selected`.
fn substitute(expr: &str, selected: &str) -> String {
    expr.replace("$__rate_interval", "1m")
        .replace("$__range", "1h")
        .replace("$instance", selected)
}

/// The largest sample value of an instant query's result.
fn max_value(result: &[Value]) -> f64 {
    result
        .iter()
        .filter_map(|s| s["value"][1].as_str()?.parse::<f64>().ok())
        .filter(|v| !v.is_nan())
        .fold(f64::NEG_INFINITY, f64::max)
}

/// Prometheus on P: both agents every second, rules every second.
fn start_prometheus(lab: &Lab, dir: &std::path::Path, targets: &[&str]) -> Proc {
    let rules = dir.join("tcpwatch-rules.yml");
    std::fs::write(&rules, rules_with_short_for()).unwrap();
    let config = dir.join("prometheus.yml");
    let targets: Vec<String> = targets.iter().map(|t| format!("'{t}'")).collect();
    std::fs::write(
        &config,
        format!(
            "global:\n  scrape_interval: 1s\n  scrape_timeout: 1s\n  evaluation_interval: 1s\n\
             rule_files:\n  - {}\n\
             scrape_configs:\n  - job_name: tcpwatch\n    static_configs:\n      - targets: [{}]\n",
            rules.display(),
            targets.join(", ")
        ),
    )
    .unwrap();
    let prometheus = lab.spawn(
        P,
        "prometheus",
        &[
            &format!("--config.file={}", config.display()),
            &format!("--storage.tsdb.path={}", dir.join("data").display()),
            &format!("--web.listen-address={PROMETHEUS}"),
        ],
    );
    let ready = format!("http://{PROMETHEUS}/-/ready");
    assert!(
        within(Duration::from_secs(30), || lab
            .run(P, "curl", &["-sf", &ready])
            .status
            .success()),
        "prometheus not ready: {}",
        last_lines(&prometheus.stderr(), 10)
    );
    prometheus
}

#[test]
fn a_real_prometheus_fires_the_alerts_and_answers_every_panel() {
    if !require_xdp_program() {
        return;
    }
    let Some(lab) = Lab::needing(&["prometheus", "curl", "nft"], 4) else {
        return;
    };
    let (a, x) = (instance(&lab, A), instance(&lab, X));

    // A blocks with nftables, at most CAP a minute; X blocks with XDP.
    let _serve_a = lab.serve(A, Listen::V4, &PORTS);
    let _serve_x = lab.serve(
        X,
        Listen::V4,
        &[PORTS[0], PORTS[1], PORTS[2], PORTS[3], PROBE],
    );
    let common = Args::run().block_ttl("5m");
    let agent_a = Agent::start(
        &lab,
        A,
        &common
            .clone()
            .block("nftables")
            .set("--max-blocks-per-minute", CAP)
            .metrics(&a),
    );
    let agent_x = Agent::start(&lab, X, &common.block("xdp").interface("eth0").metrics(&x));

    let dir = tempfile::tempdir().unwrap();
    let prometheus = start_prometheus(&lab, dir.path(), &[&a, &x]);
    let up = |target: &str| query(&lab, &format!("up{{instance=\"{target}\"}} == 1")).len() == 1;
    assert!(
        within(Duration::from_secs(20), || up(&a) && up(&x)),
        "targets not up: {}",
        api(&lab, "/api/v1/targets").unwrap_or_default()
    );
    let rule_groups = api(&lab, "/api/v1/rules").expect("rules");
    assert_eq!(
        rule_groups["data"]["groups"][0]["rules"]
            .as_array()
            .map(Vec::len),
        Some(ALERTS),
        "{rule_groups}"
    );
    // The sources are up, as /healthz says.
    assert!(
        within(Duration::from_secs(5), || query(
            &lab,
            "tcpwatch_source_up == 1"
        )
        .len()
            == 2),
        "{:?}",
        query(&lab, "tcpwatch_source_up")
    );

    // One scan of X; the scanner blocked by XDP, its next SYN dropped.
    let (scanner, host_x): (IpAddr, IpAddr) = (lab.v4(SCANNER).into(), lab.v4(X).into());
    let scan_x = scan_from(&lab, &[lab.v4(SCANNER)], host_x);
    agent_x.expect_event(&blocked(scanner, "5m", "xdp"), Duration::from_secs(5));
    let err = lab
        .try_connect(SCANNER, host_x, PROBE)
        .expect_err("blocked by XDP");
    assert!(err.contains("timed out"), "{err}");
    drop(scan_x);

    // SCANNERS scans of A at once: CAP blocked, the rest skipped.
    let mut sources = vec![lab.v4(SCANNER)];
    for n in 1..SCANNERS {
        let extra = format!("{}/24", extra_scanner(&lab, n));
        lab.output(SCANNER, "ip", &["addr", "add", &extra, "dev", "eth0"]);
        sources.push(extra_scanner(&lab, n));
    }
    let host_a: IpAddr = lab.v4(A).into();
    let _scan_a = scan_from(&lab, &sources, host_a);
    for source in &sources {
        agent_a.expect_event(
            &port_scan((*source).into(), host_a, &PORTS),
            Duration::from_secs(5),
        );
    }
    let scanned = Instant::now();
    let blocks = || {
        agent_a
            .stdout_lines()
            .iter()
            .filter(|l| event_text(l).is_some_and(|t| t.starts_with("Blocked ")))
            .count()
    };
    assert!(
        within(Duration::from_secs(2), || blocks() == CAP),
        "{:#?}",
        agent_a.stdout_lines()
    );

    // The scan alert: pending, then firing once its `for:` has passed
    // (plus a scrape and an evaluation, a second each).
    let took = wait_firing(&lab, &prometheus, "TcpwatchScanRateHigh", &a, scanned);
    eprintln!(
        "TcpwatchScanRateHigh firing {:.1}s after the last scan line (for: {}s)",
        took.as_secs_f64(),
        FOR.as_secs()
    );
    assert!(
        took >= FOR - Duration::from_secs(1) && took <= FOR + Duration::from_secs(10),
        "not firing within its for: of {FOR:?} ({took:?})"
    );
    let limited = wait_firing(&lab, &prometheus, "TcpwatchBlockRateLimited", &a, scanned);
    eprintln!(
        "TcpwatchBlockRateLimited firing {:.1}s after the last scan line",
        limited.as_secs_f64()
    );
    let answer = api(&lab, "/api/v1/alerts").unwrap();
    let scan_alert = answer["data"]["alerts"]
        .as_array()
        .unwrap()
        .iter()
        .find(|al| al["labels"]["alertname"] == "TcpwatchScanRateHigh")
        .unwrap();
    assert_eq!(scan_alert["labels"]["severity"], "warning");
    assert_eq!(
        scan_alert["annotations"]["summary"],
        format!("Port scan spike on {a}")
    );

    // Every panel's query returns data, for "All" and for both instances
    // picked, as Grafana writes them.
    let dashboard: Value = serde_json::from_str(&read(DASHBOARD)).unwrap();
    let queries = dashboard_queries(&dashboard);
    let picked = grafana_multi(&[a.clone(), x.clone()]);
    let mut empty = Vec::new();
    let mut answered = 0;
    for (title, expr) in &queries {
        for selected in [".*", picked.as_str()] {
            let promql = substitute(expr, selected);
            if query(&lab, &promql).is_empty() {
                empty.push(format!("{title}: {promql}"));
            } else {
                answered += 1;
            }
        }
    }
    assert!(
        empty.is_empty(),
        "panel queries without data:\n{}",
        empty.join("\n")
    );
    eprintln!(
        "{} panel queries x 2 instance selections: {answered} answered with data",
        queries.len()
    );
    let variable = api(
        &lab,
        "/api/v1/label/instance/values?match[]=tcpwatch_build_info",
    )
    .unwrap();
    let mut instances: Vec<String> = variable["data"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v.as_str().unwrap().to_string())
        .collect();
    instances.sort();
    let mut want = vec![a.clone(), x.clone()];
    want.sort();
    assert_eq!(instances, want, "the instance variable's values");

    // What the scans did shows in the panels' figures.
    let all = |expr: &str| max_value(&query(&lab, &substitute(expr, ".*")));
    let i = "instance=~\"$instance\"";
    assert_eq!(
        all(&format!(
            "sum(increase(tcpwatch_port_scans_total{{{i}}}[$__range]))"
        ))
        .round(),
        (SCANNERS + 1) as f64
    );
    assert_eq!(
        all(&format!("sum(tcpwatch_blocked_ips{{{i}}})")),
        (CAP + 1) as f64
    );
    assert_eq!(
        all(&format!(
            "sum(increase(tcpwatch_blocks_skipped_total{{{i}, reason=\"rate_limit\"}}[$__range]))"
        ))
        .round(),
        (SCANNERS - CAP) as f64
    );
    let dropped = |backend: &str| {
        all(&format!(
            "sum(tcpwatch_dropped_packets_total{{{i}, backend=\"{backend}\"}})"
        ))
    };
    assert!(
        within(Duration::from_secs(5), || dropped("xdp") > 0.0),
        "no XDP drops in Prometheus"
    );

    // Exactly the two alerts: a healthy agent raises nothing else.
    let expected: BTreeSet<(String, String)> = [
        ("TcpwatchBlockRateLimited".to_string(), a.clone()),
        ("TcpwatchScanRateHigh".to_string(), a.clone()),
    ]
    .into_iter()
    .collect();
    assert_eq!(firing(&lab), expected, "{:?}", alerts(&lab));

    // X stopped: down once `for:` has passed.
    let finished = agent_x.stop();
    assert_eq!(finished.status.code(), Some(0), "{}", finished.stderr);
    let down = wait_firing(&lab, &prometheus, "TcpwatchDown", &x, Instant::now());
    eprintln!(
        "TcpwatchDown firing {:.1}s after the agent stopped",
        down.as_secs_f64()
    );
    assert!(down >= FOR - Duration::from_secs(1), "{down:?}");
    assert_eq!(agent_a.stop().status.code(), Some(0));
}
