//! The deployment files: the systemd unit verifies, the Helm chart and the
//! plain manifests validate, and the configuration they ship is one the agent
//! accepts.

use crate::have;
use std::path::Path;
use std::process::Command;
use tcpwatch::settings::RunSettings;

const ROOT: &str = env!("CARGO_MANIFEST_DIR");

#[test]
fn systemd_unit_verifies_and_is_hardened() {
    if !have("systemd-analyze", &["--version"]) {
        return;
    }
    let unit =
        std::fs::read_to_string(Path::new(ROOT).join("deploy/systemd/tcpwatch.service")).unwrap();
    for line in [
        "CapabilityBoundingSet=CAP_NET_ADMIN CAP_NET_RAW CAP_BPF CAP_PERFMON",
        "ProtectSystem=strict",
        "StateDirectory=tcpwatch",
        "RuntimeDirectory=tcpwatch",
        "Restart=on-failure",
        "NoNewPrivileges=yes",
    ] {
        assert!(unit.lines().any(|l| l == line), "unit lacks {line}");
    }
    // verify checks that ExecStart exists: point it at the binary under test.
    let dir = tempfile::tempdir().unwrap();
    let copy = dir.path().join("tcpwatch.service");
    std::fs::write(
        &copy,
        unit.replace("/usr/local/bin/tcpwatch", env!("CARGO_BIN_EXE_tcpwatch")),
    )
    .unwrap();
    let out = Command::new("systemd-analyze")
        .arg("verify")
        .arg(&copy)
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        out.status.success() && stderr.trim().is_empty(),
        "systemd-analyze verify: {stderr}"
    );
}

#[test]
fn chart_and_manifests_validate_and_ship_a_valid_config() {
    if !have("python3", &["-c", "import kubernetes_validate, yaml"]) {
        return;
    }
    let out = Command::new("python3")
        .arg(Path::new(ROOT).join("tests/deploy/check_manifests.py"))
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{stderr}");
    let report: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    if report["helm"] != true {
        eprintln!("note: helm not on PATH; the chart was parsed but not rendered");
    }
    let configs = report["configs"].as_array().unwrap();
    assert!(!configs.is_empty(), "no ConfigMap found");
    for toml in configs {
        let toml = toml.as_str().unwrap();
        RunSettings::default()
            .apply_text(toml)
            .unwrap_or_else(|e| panic!("the agent rejects the shipped config: {e}\n{toml}"));
    }
}
