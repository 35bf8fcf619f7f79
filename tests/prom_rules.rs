//! The operators' tools: the alerting rules (deploy/prometheus), the Grafana
//! dashboard (deploy/grafana) and the chart's optional PrometheusRule and
//! dashboard ConfigMap.
//!
//! - `promtool check rules` and `promtool test rules` pass;
//! - the chart's copies under `files/` equal the files, and `helm template`
//!   renders them (tests/deploy/check_monitoring.py);
//! - end to end: a real Prometheus (the Debian package) loads the rules,
//!   scrapes two agents in a lab (one blocking with nftables under a block
//!   rate cap, one with XDP), and after port scans fires the scan alert
//!   within its `for:` and the rate-cap alert, and no other; every query of
//!   every dashboard panel returns data; a stopped agent fires the down
//!   alert.
//!
//! Needs promtool, prometheus, helm, curl, nft, PyYAML and
//! kubernetes-validate, an agent built with its XDP program, and root for
//! the lab (skips otherwise; fails under `CI=true`). Run with
//! `cargo test --release --test prom_rules`.

mod common;

use common::*;
use serde_json::Value;
use std::collections::BTreeSet;
use std::net::{IpAddr, Ipv4Addr};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

const ROOT: &str = env!("CARGO_MANIFEST_DIR");
const RULES: &str = "deploy/prometheus/tcpwatch-rules.yml";
const RULES_TEST: &str = "deploy/prometheus/tcpwatch-rules.test.yml";
const DASHBOARD: &str = "deploy/grafana/tcpwatch.json";
const CHART_FILES: &str = "deploy/helm/tcpwatch/files";

fn path(relative: &str) -> PathBuf {
    Path::new(ROOT).join(relative)
}

fn read(relative: &str) -> String {
    std::fs::read_to_string(path(relative))
        .unwrap_or_else(|e| panic!("cannot read {relative}: {e}"))
}

/// True when `tool args...` runs; otherwise a missing prerequisite.
fn have(tool: &str, args: &[&str]) -> bool {
    let ok = Command::new(tool)
        .args(args)
        .output()
        .is_ok_and(|o| o.status.success());
    if !ok {
        missing_prerequisite(&format!(
            "cannot run `{tool}` (scripts/install-deps.sh installs it)"
        ));
    }
    ok
}

/// Runs a command to completion; panics with its output unless it succeeds.
fn run_ok(program: &str, args: &[&str]) -> String {
    let out = Command::new(program)
        .args(args)
        .output()
        .unwrap_or_else(|e| panic!("cannot run {program}: {e}"));
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(out.status.success(), "{program} {args:?} failed:\n{text}");
    text
}

// ---------------------------------------------------------------------------
// Without a lab

#[test]
fn rules_pass_promtool_check_and_their_unit_tests() {
    if !have("promtool", &["--version"]) {
        return;
    }
    let checked = run_ok(
        "promtool",
        &["check", "rules", &path(RULES).to_string_lossy()],
    );
    assert!(checked.contains("SUCCESS: 10 rules found"), "{checked}");
    // rule_files in the test file is relative to the test file.
    let tested = run_ok(
        "promtool",
        &["test", "rules", &path(RULES_TEST).to_string_lossy()],
    );
    assert!(tested.contains("SUCCESS"), "{tested}");
}

/// Every alert of the rules file has a `for:`, a severity, a summary and a
/// description naming the instance, and a test case in the unit tests.
#[test]
fn every_alert_is_complete_and_unit_tested() {
    let rules = read(RULES);
    let tests = read(RULES_TEST);
    let mut alerts = Vec::new();
    for block in rules.split("      - alert: ").skip(1) {
        let name = block.lines().next().unwrap().trim().to_string();
        for needed in [
            "        for: ",
            "          severity: ",
            "          summary: ",
            "          description: >-",
            "{{ $labels.instance }}",
            "What to do: ",
        ] {
            assert!(block.contains(needed), "alert {name} lacks {needed:?}");
        }
        assert!(
            tests.contains(&format!("alertname: {name}\n")),
            "alert {name} has no unit test in {RULES_TEST}"
        );
        alerts.push(name);
    }
    assert_eq!(alerts.len(), 10, "{alerts:?}");
}

/// The chart ships copies (`.Files.Get` reads only inside the chart): they
/// must equal the files.
#[test]
fn the_charts_copies_equal_the_files() {
    for (file, copy) in [
        (RULES, format!("{CHART_FILES}/tcpwatch-rules.yml")),
        (DASHBOARD, format!("{CHART_FILES}/tcpwatch.json")),
    ] {
        assert!(
            read(file) == read(&copy),
            "{copy} differs from {file}: cp {file} {copy}"
        );
    }
}

#[test]
fn chart_renders_the_rules_and_the_dashboard_when_asked() {
    if !have("helm", &["version"])
        || !have("promtool", &["--version"])
        || !have("python3", &["-c", "import kubernetes_validate, yaml"])
    {
        return;
    }
    let script = path("tests/deploy/check_monitoring.py");
    let out = run_ok("python3", &[&script.to_string_lossy()]);
    assert_eq!(out.trim(), "ok");
}

/// The queries of every panel (and of the `instance` variable), with the
/// panel's title.
fn dashboard_queries(dashboard: &Value) -> Vec<(String, String)> {
    let mut out = Vec::new();
    for panel in dashboard["panels"].as_array().expect("panels") {
        let title = panel["title"].as_str().unwrap_or("").to_string();
        for target in panel["targets"].as_array().into_iter().flatten() {
            let expr = target["expr"].as_str().expect("every target has an expr");
            out.push((title.clone(), expr.to_string()));
        }
    }
    out
}

/// Structure a fleet needs: every panel on the `datasource` variable, every
/// query restricted to the `instance` variable, unique ids.
#[test]
fn dashboard_is_built_on_its_variables() {
    let dashboard: Value = serde_json::from_str(&read(DASHBOARD)).expect("valid JSON");
    let variables = dashboard["templating"]["list"].as_array().unwrap();
    let by_name = |name: &str| {
        variables
            .iter()
            .find(|v| v["name"] == name)
            .unwrap_or_else(|| panic!("no variable {name}"))
    };
    assert_eq!(by_name("datasource")["type"], "datasource");
    assert_eq!(by_name("datasource")["query"], "prometheus");
    let instance = by_name("instance");
    assert_eq!(instance["multi"], true);
    assert_eq!(instance["includeAll"], true);
    assert_eq!(instance["datasource"]["uid"], "${datasource}");

    let mut ids = BTreeSet::new();
    for panel in dashboard["panels"].as_array().unwrap() {
        assert!(ids.insert(panel["id"].as_u64().unwrap()), "duplicate id");
        if panel["type"] != "row" {
            assert_eq!(
                panel["datasource"]["uid"], "${datasource}",
                "{}",
                panel["title"]
            );
        }
    }
    let queries = dashboard_queries(&dashboard);
    assert!(queries.len() >= 25, "{} queries", queries.len());
    for (title, expr) in &queries {
        assert!(
            expr.contains("instance=~\"$instance\""),
            "{title}: {expr} ignores the instance variable"
        );
    }
}

// ---------------------------------------------------------------------------
// End to end

const A: usize = 0;
const X: usize = 1;
const B: usize = 2;
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

fn agent_args(lab: &Lab, index: usize, block: &[&str]) -> Vec<String> {
    let mut args: Vec<String> = [
        "run",
        "--source",
        "procfs",
        "--interval",
        "1s",
        "--state",
        "off",
        "--block-ttl",
        "5m",
    ]
    .iter()
    .map(|s| s.to_string())
    .collect();
    args.extend(block.iter().map(|s| s.to_string()));
    args.push("--metrics-addr".into());
    args.push(instance(lab, index));
    args
}

fn start_agent(lab: &Lab, index: usize, block: &[&str]) -> Agent {
    let args = agent_args(lab, index, block);
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    Agent::start(lab, index, &args)
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
    let out = lab.run(
        P,
        "curl",
        &[
            "-sS",
            "--max-time",
            "5",
            "--data-urlencode",
            &format!("query={promql}"),
            &url,
        ],
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
    answer["data"]["alerts"]
        .as_array()
        .into_iter()
        .flatten()
        .map(|a| {
            let field = |v: &Value| v.as_str().unwrap_or("").to_string();
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

fn last_lines(text: &str, n: usize) -> String {
    let lines: Vec<&str> = text.lines().collect();
    lines[lines.len().saturating_sub(n)..].join("\n")
}

/// An address on B's subnet for extra scanner `n` (1-based): `.100 + n`.
fn extra_scanner(lab: &Lab, n: usize) -> Ipv4Addr {
    let [a, b, c, _] = lab.v4(B).octets();
    Ipv4Addr::new(a, b, c, 100 + n as u8)
}

/// From B: from each source address, one connection to each of `PORTS` of
/// `target`, all held open; returns once every one is established.
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
    let scan = lab.spawn(B, "python3", &args);
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

#[test]
fn a_real_prometheus_fires_the_alerts_and_answers_every_panel() {
    if !have("prometheus", &["--version"])
        || !have("curl", &["--version"])
        || !have("nft", &["--version"])
    {
        return;
    }
    if !tcpwatch::source::xdp::built() {
        missing_prerequisite("the XDP program was not built (clang missing at build time)");
        return;
    }
    let Some(lab) = Lab::new(4) else { return };
    let (a, x) = (instance(&lab, A), instance(&lab, X));

    // A blocks with nftables, at most CAP a minute; X blocks with XDP.
    let _serve_a = lab.serve(A, Listen::V4, &PORTS);
    let _serve_x = lab.serve(
        X,
        Listen::V4,
        &[PORTS[0], PORTS[1], PORTS[2], PORTS[3], PROBE],
    );
    let cap = CAP.to_string();
    let agent_a = start_agent(
        &lab,
        A,
        &["--block", "nftables", "--max-blocks-per-minute", &cap],
    );
    let agent_x = start_agent(&lab, X, &["--block", "xdp", "--interface", "eth0"]);

    // Prometheus on P: both agents every second, rules every second.
    let dir = tempfile::tempdir().unwrap();
    let rules = dir.path().join("tcpwatch-rules.yml");
    std::fs::write(&rules, rules_with_short_for()).unwrap();
    let config = dir.path().join("prometheus.yml");
    std::fs::write(
        &config,
        format!(
            "global:\n  scrape_interval: 1s\n  scrape_timeout: 1s\n  evaluation_interval: 1s\n\
             rule_files:\n  - {}\n\
             scrape_configs:\n  - job_name: tcpwatch\n    static_configs:\n      - targets: ['{a}', '{x}']\n",
            rules.display()
        ),
    )
    .unwrap();
    let prometheus = lab.spawn(
        P,
        "prometheus",
        &[
            &format!("--config.file={}", config.display()),
            &format!("--storage.tsdb.path={}", dir.path().join("data").display()),
            &format!("--web.listen-address={PROMETHEUS}"),
        ],
    );
    let up = |target: &str| query(&lab, &format!("up{{instance=\"{target}\"}} == 1")).len() == 1;
    let ready = format!("http://{PROMETHEUS}/-/ready");
    assert!(
        within(Duration::from_secs(30), || lab
            .run(P, "curl", &["-sf", &ready])
            .status
            .success()),
        "prometheus not ready: {}",
        last_lines(&prometheus.stderr(), 10)
    );
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
        Some(10),
        "{rule_groups}"
    );
    // One scan of X from B; B blocked by XDP, its next SYNs dropped.
    let (scanner, host_x): (IpAddr, IpAddr) = (lab.v4(B).into(), lab.v4(X).into());
    let scan_x = scan_from(&lab, &[lab.v4(B)], host_x);
    agent_x.expect_event(
        &format!("Blocked {scanner} for 5m via xdp"),
        Duration::from_secs(5),
    );
    let err = lab
        .try_connect(B, host_x, PROBE)
        .expect_err("blocked by XDP");
    assert!(err.contains("timed out"), "{err}");
    drop(scan_x);

    // SCANNERS scans of A at once: CAP blocked, the rest skipped.
    let mut sources = vec![lab.v4(B)];
    for n in 1..SCANNERS {
        let extra = format!("{}/24", extra_scanner(&lab, n));
        let out = lab.run(B, "ip", &["addr", "add", &extra, "dev", "eth0"]);
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
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
    let blocked = || {
        agent_a
            .stdout_lines()
            .iter()
            .filter(|l| event_text(l).is_some_and(|t| t.starts_with("Blocked ")))
            .count()
    };
    assert!(
        within(Duration::from_secs(2), || blocked() == CAP),
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
    assert!(
        all(&format!(
            "sum(increase(tcpwatch_xdp_dropped_packets_total{{{i}}}[$__range]))"
        )) > 0.0,
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
