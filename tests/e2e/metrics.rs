//! The metrics endpoint: the agent serves on host A's lab address; curl,
//! promtool and a real Prometheus server (the Debian package, run inside a
//! lab host with a throwaway config and TSDB) read it.

use crate::agent::*;
use crate::lab::*;
use std::io::Write;
use std::net::IpAddr;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

const EVENT: Duration = Duration::from_secs(5);
/// Where Prometheus runs: its own connections to A are all it adds there.
const P: usize = C;
const PORT: u16 = 9472;

fn lab() -> Option<Lab> {
    Lab::needing(&["curl", "promtool", "prometheus"], 3)
}

fn metrics_addr(lab: &Lab) -> String {
    format!("{}:{PORT}", lab.v4(A))
}

fn start(lab: &Lab) -> Agent {
    Agent::start(lab, A, &Args::run().metrics(metrics_addr(lab)))
}

/// `curl -sS -D - URL [-H header]` from host B: (response head, body).
fn curl(lab: &Lab, url: &str, header: Option<&str>) -> (String, String) {
    let mut args = vec!["-sS", "-D", "-", url];
    if let Some(h) = header {
        args.extend(["-H", h]);
    }
    let text = lab.output(B, "curl", &args);
    let (head, body) = text.split_once("\r\n\r\n").expect("an HTTP response");
    (head.to_lowercase(), body.to_string())
}

fn new_connection_lines(agent: &Agent) -> usize {
    agent
        .stdout_lines()
        .iter()
        .filter(|l| event_text(l).is_some_and(|t| t.starts_with("New connection: ")))
        .count()
}

/// The sum of a counter's samples in the text format.
fn sum_of(text: &str, name: &str) -> f64 {
    text.lines()
        .filter(|l| l.starts_with(name) && l[name.len()..].starts_with(['{', ' ']))
        .filter_map(|l| l.rsplit_once(' ')?.1.parse::<f64>().ok())
        .sum()
}

#[test]
fn text_format_passes_promtool_and_counts_every_printed_connection() {
    let Some(lab) = lab() else { return };
    let _server = lab.serve(A, Listen::V4, &[80, 81]);
    let agent = start(&lab);
    let _clients = lab.connect(B, lab.v4(A).into(), &[80, 81], None);
    let url = format!("http://{}/metrics", metrics_addr(&lab));
    assert!(agent
        .wait_for(|l| l.contains("New connection"), EVENT)
        .is_some());
    std::thread::sleep(SETTLE);

    let (head, body) = curl(&lab, &url, None);
    assert!(head.starts_with("http/1.1 200"), "{head}");
    assert!(
        head.contains("content-type: text/plain; version=0.0.4; charset=utf-8"),
        "{head}"
    );
    assert_eq!(
        sum_of(&body, "tcpwatch_new_connections_total"),
        new_connection_lines(&agent) as f64
    );
    assert_eq!(new_connection_lines(&agent), 2);
    for (name, ty) in [
        ("tcpwatch_new_connections_total", "counter"),
        ("tcpwatch_port_scans_total", "counter"),
        ("tcpwatch_blocked_ips", "gauge"),
        ("tcpwatch_events_lost_total", "counter"),
        ("tcpwatch_poll_duration_seconds", "histogram"),
        ("tcpwatch_tracked_sources", "gauge"),
        ("tcpwatch_build_info", "gauge"),
    ] {
        assert!(
            body.contains(&format!("# TYPE {name} {ty}\n")),
            "no {name} {ty} in\n{body}"
        );
    }
    assert!(body.contains("tcpwatch_poll_duration_seconds_count{source=\"procfs\"}"));
    assert!(
        !body.contains(&lab.v4(B).to_string()),
        "an address leaked into a label"
    );

    let mut promtool = Command::new("promtool")
        .args(["check", "metrics"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    promtool
        .stdin
        .take()
        .unwrap()
        .write_all(body.as_bytes())
        .unwrap();
    let checked = promtool.wait_with_output().unwrap();
    assert!(
        checked.status.success() && checked.stdout.is_empty() && checked.stderr.is_empty(),
        "promtool check metrics: {}{}",
        String::from_utf8_lossy(&checked.stdout),
        String::from_utf8_lossy(&checked.stderr)
    );

    let (head, body) = curl(
        &lab,
        &url,
        Some("Accept: application/openmetrics-text; version=1.0.0"),
    );
    assert!(
        head.contains("content-type: application/openmetrics-text; version=1.0.0; charset=utf-8"),
        "{head}"
    );
    assert!(body.ends_with("# EOF\n"), "{body}");

    let (head, body) = curl(
        &lab,
        &format!("http://{}/healthz", metrics_addr(&lab)),
        None,
    );
    assert!(
        head.starts_with("http/1.1 200") && body == "ok\n",
        "{head}\n{body}"
    );
    let (head, body) = curl(&lab, &format!("http://{}/", metrics_addr(&lab)), None);
    assert!(
        head.contains("text/html") && body.contains("href=\"/metrics\""),
        "{body}"
    );

    assert_eq!(agent.stop().status.code(), Some(0));
}

/// A port taken by another process does not stop detection: the agent says
/// so once, reports connections, and serves as soon as the port is free.
#[test]
fn a_taken_port_is_retried_while_detection_goes_on() {
    let Some(lab) = lab() else { return };
    let addr = metrics_addr(&lab);
    let holder = lab.spawn(
        A,
        "python3",
        &[
            "-c",
            "import socket,sys,time\ns=socket.socket()\ns.bind((sys.argv[1],int(sys.argv[2])))\ns.listen()\nprint('ready',flush=True)\ntime.sleep(600)",
            &lab.v4(A).to_string(),
            &PORT.to_string(),
        ],
    );
    assert!(holder.wait_for(|l| l == "ready", HELPER_TIMEOUT).is_some());
    let _server = lab.serve(A, Listen::V4, &[80]);
    let agent = start(&lab);
    let warning = format!(
        "tcpwatch: warning: metrics address {addr}: Address already in use; detection goes on, retrying every 2s"
    );
    assert_eq!(diagnostics(&agent.stderr()), [warning.as_str()]);

    let host: IpAddr = lab.v4(A).into();
    let client = lab.connect(B, host, &[80], None);
    agent.expect_event(&new_connection(client.locals[0], at(host, 80)), EVENT);

    drop(holder);
    let listening = format!("tcpwatch: metrics on {addr}");
    agent.expect_stderr(&listening, Duration::from_secs(10));
    let before = new_connection_lines(&agent);
    let (head, body) = curl(&lab, &format!("http://{addr}/metrics"), None);
    let after = new_connection_lines(&agent);
    assert!(head.starts_with("http/1.1 200"), "{head}");
    let counted = sum_of(&body, "tcpwatch_new_connections_total");
    assert!(
        (before as f64..=after as f64).contains(&counted),
        "counter {counted}, lines printed {before}..{after}"
    );
    let (head, body) = curl(&lab, &format!("http://{addr}/healthz"), None);
    assert!(head.starts_with("http/1.1 200") && body == "ok\n", "{head}");
    let finished = agent.stop();
    assert_eq!(finished.status.code(), Some(0));
    assert_eq!(
        diagnostics(&finished.stderr),
        [warning.as_str(), listening.as_str()]
    );
}

/// Any other bind error is a configuration error: exit 1, one line.
#[test]
fn an_address_not_on_this_host_is_exit_1_with_one_line() {
    let Some(lab) = lab() else { return };
    let args = Args::run().metrics("192.0.2.1:9472");
    let finished = Agent::spawn(&lab, A, &args).exit_within(START_TIMEOUT);
    assert_eq!(finished.status.code(), Some(1));
    assert_eq!(
        finished.stderr,
        "tcpwatch: error: metrics address 192.0.2.1:9472: Cannot assign requested address\n"
    );
    assert!(finished.stdout.is_empty());
}

/// A real Prometheus on host P scrapes the agent on A every second; its view
/// of `tcpwatch_new_connections_total` must equal the number of `New
/// connection` lines A printed (B's three connections plus Prometheus's own
/// scrape connection, which A sees and reports too).
#[test]
fn prometheus_scrapes_the_number_of_printed_connections() {
    let Some(lab) = lab() else { return };
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("prometheus.yml");
    std::fs::write(
        &config,
        format!(
            "global:\n  scrape_interval: 1s\n  scrape_timeout: 1s\nscrape_configs:\n  - job_name: tcpwatch\n    static_configs:\n      - targets: ['{}']\n",
            metrics_addr(&lab)
        ),
    )
    .unwrap();
    let data = dir.path().join("data");
    let _server = lab.serve(A, Listen::V4, &[80, 81, 82]);
    let agent = start(&lab);
    let prometheus = lab.spawn(
        P,
        "prometheus",
        &[
            &format!("--config.file={}", config.display()),
            &format!("--storage.tsdb.path={}", data.display()),
            "--web.listen-address=127.0.0.1:9090",
        ],
    );
    let _clients = lab.connect(B, lab.v4(A).into(), &[80, 81, 82], None);
    assert!(agent
        .wait_for(|l| l.contains("New connection"), EVENT)
        .is_some());
    std::thread::sleep(SETTLE);

    let query = "http://127.0.0.1:9090/api/v1/query?query=sum(tcpwatch_new_connections_total)";
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let printed = new_connection_lines(&agent);
        let out = lab.run(P, "curl", &["-sS", query]);
        let last = String::from_utf8_lossy(&out.stdout).into_owned();
        let value = serde_json::from_str::<serde_json::Value>(&last)
            .ok()
            .and_then(|v| {
                v["data"]["result"][0]["value"][1]
                    .as_str()
                    .map(str::to_string)
            });
        // Equal, and past B's three: the scrape connection is in both.
        if printed > 3 && value.as_deref() == Some(printed.to_string().as_str()) {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "Prometheus never saw {printed}; last answer: {last}\nprometheus: {}",
            prometheus
                .stderr()
                .lines()
                .rev()
                .take(5)
                .collect::<Vec<_>>()
                .join("\n")
        );
        std::thread::sleep(Duration::from_millis(500));
    }
    // The scrape was classic text or OpenMetrics, as Prometheus negotiated;
    // either way its target is healthy.
    let targets = lab.output(P, "curl", &["-sS", "http://127.0.0.1:9090/api/v1/targets"]);
    assert!(targets.contains("\"health\":\"up\""), "{targets}");
    let lab_ip: IpAddr = lab.v4(A).into();
    assert!(targets.contains(&lab_ip.to_string()));
    assert_eq!(agent.stop().status.code(), Some(0));
}
