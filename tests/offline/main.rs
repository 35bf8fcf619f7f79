//! The tests that need neither root nor namespaces, in one test binary: the
//! command line of the real binary (`cli`), `tcpwatch replay` on files
//! (`replay`), properties of the procfs parser (`procfs_props`), every input
//! a fuzzer crashed on (`fuzz_regressions`), the deployment files
//! (`deploy`), the alerting rules and the dashboard (`rules`), the module
//! layers of the crate (`layers`), the generator of the BPF records' Rust
//! side (`bpf_record`) and Kubernetes naming over a node's directories
//! (`kubelet`). The real-Linux tests are the `e2e` binary.

#[path = "../shared/args.rs"]
mod args;
#[path = "../shared/monitoring.rs"]
mod monitoring;

mod bpf_record;
mod cli;
mod deploy;
mod fuzz_regressions;
mod kubelet;
mod layers;
mod procfs_props;
mod replay;
mod rules;

use std::ffi::OsStr;
use std::fmt::Debug;
use std::process::{Command, Output, Stdio};

/// A missing tool fails the test in CI and skips it elsewhere.
pub fn have(tool: &str, probe: &[&str]) -> bool {
    let ok = Command::new(tool)
        .args(probe)
        .output()
        .is_ok_and(|o| o.status.success());
    if !ok {
        assert!(
            std::env::var("CI").as_deref() != Ok("true"),
            "{tool} is required in CI (make deps installs it)"
        );
        eprintln!("skipped: {tool} not available (run `make deps` as root)");
    }
    ok
}

/// `tcpwatch ARGS...` to its end: stdin closed, output captured.
fn tcpwatch(args: &[impl AsRef<OsStr>]) -> Output {
    Command::new(args::AGENT)
        .args(args)
        .stdin(Stdio::null())
        .output()
        .expect("cannot run tcpwatch")
}

fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

/// Asserts a usage or input error: exit 2, nothing on stdout, exactly one
/// line on stderr; returns that line.
fn one_line_error(args: &[impl AsRef<OsStr> + Debug]) -> String {
    let out = tcpwatch(args);
    let stderr = text(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{args:?}: stderr: {stderr}");
    assert_eq!(text(&out.stdout), "", "{args:?} printed on stdout");
    assert!(
        stderr.ends_with('\n'),
        "{args:?}: stderr not one line: {stderr:?}"
    );
    assert_eq!(stderr.lines().count(), 1, "{args:?}: stderr: {stderr:?}");
    stderr.trim_end().to_string()
}
