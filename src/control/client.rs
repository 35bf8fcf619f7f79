//! Asks the running agent over its control socket (`tcpwatch status`,
//! `tcpwatch blocks`).

use super::{parse_response, to_line, Request, Response, MAX_RESPONSE};
use anyhow::Context;
use std::io::{ErrorKind, Read, Write};
use std::os::unix::net::UnixStream;
use std::path::Path;
use std::time::Duration;

/// How long the agent may take to answer (a firewall call, a busy agent).
const ANSWER_TIMEOUT: Duration = Duration::from_secs(30);

/// Sends `request` to the agent listening at `path` and returns its
/// answer; `None` when no agent listens there (no socket, or a socket
/// left by an agent that is gone).
pub fn ask(path: &Path, request: &Request) -> anyhow::Result<Option<Response>> {
    let mut stream = match UnixStream::connect(path) {
        Ok(stream) => stream,
        Err(e) if matches!(e.kind(), ErrorKind::NotFound | ErrorKind::ConnectionRefused) => {
            return Ok(None)
        }
        Err(e) if e.kind() == ErrorKind::PermissionDenied => anyhow::bail!(
            "cannot reach the agent at {}: permission denied (run as root or as the agent's user)",
            path.display()
        ),
        Err(e) => {
            return Err(e).with_context(|| format!("cannot reach the agent at {}", path.display()))
        }
    };
    let shown = path.display();
    stream.set_read_timeout(Some(ANSWER_TIMEOUT))?;
    stream.set_write_timeout(Some(ANSWER_TIMEOUT))?;
    stream
        .write_all(to_line(request).as_bytes())
        .with_context(|| format!("cannot send to the agent at {shown}"))?;
    let mut answer = Vec::new();
    stream
        .take(MAX_RESPONSE as u64 + 1)
        .read_to_end(&mut answer)
        .with_context(|| format!("no answer from the agent at {shown}"))?;
    if answer.is_empty() {
        anyhow::bail!("the agent at {shown} closed the connection without an answer");
    }
    parse_response(&answer)
        .map(Some)
        .map_err(anyhow::Error::msg)
}
