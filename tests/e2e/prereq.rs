//! What a test needs from this machine before it can run: root, tools, the
//! XDP program. A missing prerequisite skips the test with a message, or
//! fails it when `CI=true` (a CI run must never pass by skipping).

use std::process::{Command, Stdio};

/// Reports a missing prerequisite: panics when `CI=true`, otherwise prints
/// why the test is skipped. The caller returns from the test when this
/// returns.
pub fn missing_prerequisite(what: &str) {
    if std::env::var("CI").as_deref() == Ok("true") {
        panic!("prerequisite missing (CI=true, so this fails instead of skipping): {what}");
    }
    eprintln!("SKIPPED: prerequisite missing: {what}");
}

/// True when running as root; otherwise reports it.
pub fn require_root() -> bool {
    use std::os::unix::fs::MetadataExt;
    // /proc/self belongs to the effective user of this process.
    let euid = std::fs::metadata("/proc/self").map(|m| m.uid()).ok();
    if euid == Some(0) {
        return true;
    }
    missing_prerequisite("not running as root (network namespaces need it)");
    false
}

/// True when every tool runs (its version probe succeeds); otherwise
/// reports the first that does not. A tool is a name on PATH or a path.
pub fn require_tools(tools: &[&str]) -> bool {
    tools.iter().all(|tool| require_tool(tool))
}

fn require_tool(tool: &str) -> bool {
    // The few tools without a `--version`.
    let probe: &[&str] = match tool {
        "ip" => &["-V"],
        "ipset" => &["version"],
        "setcap" => &["-h"],
        // `--version` exits 1; `--echo` prints the (default) settings.
        "masscan" => &["--echo"],
        _ => &["--version"],
    };
    let ran = Command::new(tool)
        .args(probe)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success());
    if !ran {
        missing_prerequisite(&format!(
            "cannot run `{tool}` (scripts/install-deps.sh installs it)"
        ));
    }
    ran
}

/// True when the binary carries its XDP program (clang was there at build
/// time); otherwise reports it.
pub fn require_xdp_program() -> bool {
    if tcpwatch::bpf::xdp::built() {
        return true;
    }
    missing_prerequisite("the XDP program was not built (clang missing at build time)");
    false
}

/// True when the binary carries its tracepoint program (clang was there at
/// build time); otherwise reports it.
pub fn require_tracepoint_program() -> bool {
    if tcpwatch::bpf::tracepoint::built() {
        return true;
    }
    missing_prerequisite("the tracepoint program was not built (clang missing at build time)");
    false
}
