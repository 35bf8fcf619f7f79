//! The operators' monitoring files, checked without a lab: the alerting
//! rules (deploy/prometheus) pass `promtool check rules` and their unit
//! tests (`promtool test rules`), every alert is complete and tested, the
//! chart's copies equal the files and `helm template` renders them only
//! when asked (tests/deploy/check_monitoring.py), the Grafana dashboard is
//! built on its variables and names only metrics the agent exports. The
//! real Prometheus is `tests/e2e/prometheus.rs`.

use crate::have;
use crate::monitoring::*;
use serde_json::Value;
use std::collections::BTreeSet;
use std::process::Command;

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

#[test]
fn rules_pass_promtool_check_and_their_unit_tests() {
    if !have("promtool", &["--version"]) {
        return;
    }
    let checked = run_ok(
        "promtool",
        &["check", "rules", &path(RULES).to_string_lossy()],
    );
    assert!(
        checked.contains(&format!("SUCCESS: {ALERTS} rules found")),
        "{checked}"
    );
    // rule_files in the test file is relative to the test file.
    let tested = run_ok(
        "promtool",
        &["test", "rules", &path(RULES_TEST).to_string_lossy()],
    );
    assert!(tested.contains("SUCCESS"), "{tested}");
}

/// Every alert of the rules file has a `for:`, a severity, a summary and a
/// description naming the instance and what to do, and a test case in the
/// unit tests.
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
    assert_eq!(alerts.len(), ALERTS, "{alerts:?}");
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
fn chart_renders_the_rules_and_the_dashboard_only_when_asked() {
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

/// The `tcpwatch_*` names in a text, counters by their `_total` name and
/// histograms by their series names.
fn metric_names(text: &str) -> BTreeSet<String> {
    let re = regex::Regex::new(r"tcpwatch_[a-z0-9_]+").unwrap();
    re.find_iter(text).map(|m| m.as_str().to_string()).collect()
}

/// Every metric the rules and the dashboard name is one the agent
/// exports (as the docs list them), and every metric the agent exports is
/// on the dashboard.
#[test]
fn rules_and_dashboard_name_exported_metrics_and_the_dashboard_shows_them_all() {
    let exported: BTreeSet<String> = metric_names(&read("docs/metrics.md"))
        .into_iter()
        .flat_map(|name| {
            // A histogram's series.
            let series = ["_bucket", "_sum", "_count"].map(|s| format!("{name}{s}"));
            std::iter::once(name).chain(series)
        })
        .collect();
    let dashboard = read(DASHBOARD);
    for (file, text) in [(RULES, read(RULES)), (DASHBOARD, dashboard.clone())] {
        for name in metric_names(&text) {
            assert!(
                exported.contains(&name),
                "{file} names {name}, which docs/metrics.md does not list"
            );
        }
    }
    let shown = metric_names(&dashboard);
    for name in metric_names(&read("docs/metrics.md")) {
        let on_dashboard = shown.contains(&name)
            || ["_bucket", "_sum", "_count"]
                .iter()
                .any(|s| shown.contains(&format!("{name}{s}")));
        assert!(on_dashboard, "{name} is exported but not on the dashboard");
    }
}
