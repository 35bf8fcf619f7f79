//! The alerting rules and the dashboard as files, shared by the offline
//! checks (`tests/offline/monitoring.rs`) and the real-Prometheus test
//! (`tests/e2e/prometheus.rs`). Each binary uses a part of it.
#![allow(dead_code)]

use std::path::{Path, PathBuf};

pub const ROOT: &str = env!("CARGO_MANIFEST_DIR");
pub const RULES: &str = "deploy/prometheus/tcpwatch-rules.yml";
pub const RULES_TEST: &str = "deploy/prometheus/tcpwatch-rules.test.yml";
pub const DASHBOARD: &str = "deploy/grafana/tcpwatch.json";
pub const CHART_FILES: &str = "deploy/helm/tcpwatch/files";
/// The alerts of the rules file.
pub const ALERTS: usize = 11;

pub fn path(relative: &str) -> PathBuf {
    Path::new(ROOT).join(relative)
}

pub fn read(relative: &str) -> String {
    std::fs::read_to_string(path(relative))
        .unwrap_or_else(|e| panic!("cannot read {relative}: {e}"))
}

/// The queries of every panel, with the panel's title.
pub fn dashboard_queries(dashboard: &serde_json::Value) -> Vec<(String, String)> {
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
