//! Running the firewall tools (`nft`, `ipset`, `iptables-restore`): the one
//! place the block backends touch the OS, so their scripts can be tested as
//! text.

use anyhow::Context;
use std::io::Write;
use std::process::{Command, Stdio};

/// Runs `program args...`, feeding it `stdin`, and returns its stdout. A
/// failure is one line: the program and the first line of what it said.
pub fn run(program: &str, args: &[&str], stdin: Option<&str>) -> anyhow::Result<String> {
    let mut child = Command::new(program)
        .args(args)
        .stdin(if stdin.is_some() {
            Stdio::piped()
        } else {
            Stdio::null()
        })
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(|e| match e.kind() {
            std::io::ErrorKind::NotFound => anyhow::anyhow!("{program}: command not found"),
            _ => anyhow::anyhow!("{program}: {e}"),
        })?;
    // Written from another thread: a tool that answers before it has read
    // all its input (an error on line 1 of a 10,000-line batch) must not
    // deadlock us on a full pipe.
    let writer = stdin.map(|text| {
        let mut pipe = child.stdin.take().expect("stdin is piped");
        let text = text.to_string();
        std::thread::spawn(move || {
            let _ = pipe.write_all(text.as_bytes());
        })
    });
    let output = child
        .wait_with_output()
        .with_context(|| format!("{program}: wait"))?;
    if let Some(writer) = writer {
        let _ = writer.join();
    }
    if output.status.success() {
        return Ok(String::from_utf8_lossy(&output.stdout).into_owned());
    }
    let stderr = String::from_utf8_lossy(&output.stderr);
    let cause = stderr
        .lines()
        .map(str::trim)
        .find(|l| !l.is_empty())
        .map(str::to_string)
        .unwrap_or_else(|| format!("exited with {}", output.status));
    anyhow::bail!("{program}: {cause}")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn feeds_stdin_and_returns_stdout() {
        assert_eq!(run("cat", &[], Some("a\nb\n")).unwrap(), "a\nb\n");
    }

    #[test]
    fn failure_is_one_line_naming_the_program() {
        let err = run("sh", &["-c", "echo 'first\nsecond' >&2; exit 3"], None).unwrap_err();
        assert_eq!(err.to_string(), "sh: first");
        let err = run("tcpwatch-no-such-tool", &[], None).unwrap_err();
        assert_eq!(err.to_string(), "tcpwatch-no-such-tool: command not found");
    }
}
