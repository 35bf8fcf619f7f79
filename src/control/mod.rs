//! The control socket: how `tcpwatch status` and `tcpwatch blocks` talk to
//! the running agent.
//!
//! A Unix stream socket in the file system (`--control`, default
//! `/run/tcpwatch/tcpwatch.sock`), mode 0600 and owned by the agent's user,
//! rather than a route on the metrics server:
//!
//! - it works with `--metrics-addr off`, and the metrics address may face
//!   the network (a pod's IP) while adding and lifting blocks must never;
//! - least privilege: only root and the agent's own user can connect (the
//!   file's mode, and each connection's peer credentials checked again);
//!   the loopback HTTP port would serve every local user;
//! - under systemd with `DynamicUser=yes` the unit's `RuntimeDirectory`
//!   holds it and root reaches it; in a container it lives in the
//!   container's `/run` and `docker exec`/`kubectl exec` reach it as the
//!   agent's user.
//!
//! One request a connection: a JSON object on one line, answered by one
//! JSON object on one line ([`Request`], [`Response`]). A request is read
//! up to [`MAX_REQUEST`] bytes and for [`TIMEOUT`] at most, and
//! [`CONCURRENT`] connections are served at once: a stuck or hostile
//! client cannot grow the agent. [`server`] serves; [`client`] asks.

pub mod client;
pub mod server;

pub use crate::blockset::BlockInfo;
use crate::setting::Value;
use crate::text::printable;
use std::path::PathBuf;
use std::time::Duration;

/// Where the agent listens unless `--control` says otherwise.
pub const DEFAULT_SOCKET: &str = "/run/tcpwatch/tcpwatch.sock";
/// The longest request read.
pub const MAX_REQUEST: usize = 4096;
/// The longest answer read by the client (a status with many blocks).
pub const MAX_RESPONSE: usize = 64 << 20;
/// How long a connection may take to send its request.
pub const TIMEOUT: Duration = Duration::from_secs(5);
/// Connections served at once; others wait in the listen queue.
pub const CONCURRENT: usize = 4;

/// `--control`: a socket path, or `off`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ControlPath {
    Off,
    At(PathBuf),
}

impl ControlPath {
    pub fn path(&self) -> Option<&std::path::Path> {
        match self {
            ControlPath::Off => None,
            ControlPath::At(path) => Some(path),
        }
    }
}

impl Value for ControlPath {
    fn parse(text: &str) -> Result<Self, String> {
        match text {
            "off" => Ok(ControlPath::Off),
            "" => Err("empty path (use a path or 'off')".to_string()),
            path => Ok(ControlPath::At(PathBuf::from(path))),
        }
    }
    fn show(&self) -> String {
        match self {
            ControlPath::Off => "off".to_string(),
            ControlPath::At(path) => path.display().to_string(),
        }
    }
}

crate::settings! {
    /// The control socket.
    pub struct Settings {
        /// Socket for `tcpwatch status` and `tcpwatch blocks` (root and the agent's user only), or 'off'
        control: ControlPath = ControlPath::At(PathBuf::from(DEFAULT_SOCKET)) => "control", "PATH|off", restart;
    }
}

/// What a client asks.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(tag = "request", rename_all = "snake_case", deny_unknown_fields)]
pub enum Request {
    /// The status view, with the `top` scanners and ports.
    Status { top: usize },
    /// The blocks in force.
    List,
    /// Block `target` (an address or a CIDR prefix) for `ttl_ms`, or the
    /// agent's `--block-ttl`.
    Add { target: String, ttl_ms: Option<u64> },
    /// Lift the block of `target`.
    Remove { target: String },
    /// Lift every block.
    Flush,
}

/// The source, as `/healthz` sees it.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct SourceStatus {
    pub name: String,
    /// `ok`, `source failing` or `source not running`.
    pub health: String,
    pub events_lost: u64,
}

/// The block stage.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct BlockingStatus {
    /// `None` when blocking is off.
    pub backend: Option<String>,
    pub dry_run: bool,
    pub active: usize,
    pub pending: usize,
    pub errors: u64,
    pub drift_repaired: u64,
    pub packets_dropped: u64,
}

/// A source among the top scanners.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Scanner {
    pub source: String,
    pub scans: u64,
}

/// A port among the most scanned.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Port {
    pub port: u16,
    pub scans: u64,
}

/// The last hour in figures.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct LastHour {
    pub connections_inbound: u64,
    pub connections_outbound: u64,
    pub port_scans: u64,
    pub blocks: u64,
}

/// `tcpwatch status`.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Status {
    pub version: String,
    pub node: String,
    pub pid: u32,
    pub uptime_seconds: u64,
    pub source: SourceStatus,
    pub blocking: BlockingStatus,
    pub last_hour: LastHour,
    pub top_scanners: Vec<Scanner>,
    pub top_ports: Vec<Port>,
    pub blocks: Vec<BlockInfo>,
}

/// What the agent answers.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(tag = "response", rename_all = "snake_case")]
pub enum Response {
    Status(Box<Status>),
    Blocks {
        blocks: Vec<BlockInfo>,
    },
    /// A block applied: as its `Blocked` line says it.
    Added {
        target: String,
        ttl_ms: u64,
        backend: String,
    },
    /// `was_blocked`: whether there was a block to lift.
    Removed {
        target: String,
        backend: Option<String>,
        was_blocked: bool,
    },
    Flushed {
        targets: Vec<String>,
        backend: Option<String>,
    },
    /// The request was understood and refused (an allowlisted address,
    /// blocking off, the firewall failing): one line for the operator.
    Refused {
        message: String,
    },
}

/// Reads a request: one JSON object, at most [`MAX_REQUEST`] bytes, its
/// line end optional. Errors are one line.
pub fn parse_request(bytes: &[u8]) -> Result<Request, String> {
    if bytes.len() > MAX_REQUEST {
        return Err(format!("request longer than {MAX_REQUEST} bytes"));
    }
    let text = std::str::from_utf8(bytes).map_err(|_| "request is not UTF-8".to_string())?;
    serde_json::from_str(text.trim_end())
        .map_err(|e| format!("bad request: {}", printable(&crate::text::one_line(&e))))
}

/// Reads the agent's answer. Errors are one line.
pub fn parse_response(bytes: &[u8]) -> Result<Response, String> {
    if bytes.len() > MAX_RESPONSE {
        return Err("answer too long".to_string());
    }
    let text = std::str::from_utf8(bytes).map_err(|_| "answer is not UTF-8".to_string())?;
    serde_json::from_str(text.trim_end()).map_err(|e| {
        format!(
            "the agent's answer does not parse: {}",
            printable(&crate::text::one_line(&e))
        )
    })
}

/// One line of JSON (what goes on the socket).
pub fn to_line<T: serde::Serialize>(value: &T) -> String {
    let mut line = serde_json::to_string(value).expect("plain data serializes");
    line.push('\n');
    line
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn requests_round_trip_and_bad_ones_are_one_line() {
        for request in [
            Request::Status { top: 10 },
            Request::List,
            Request::Add {
                target: "198.51.100.7".into(),
                ttl_ms: Some(300_000),
            },
            Request::Remove {
                target: "2001:db8:1:2::/64".into(),
            },
            Request::Flush,
        ] {
            let line = to_line(&request);
            assert!(line.ends_with('\n') && line.lines().count() == 1);
            assert_eq!(parse_request(line.as_bytes()), Ok(request));
        }
        assert_eq!(
            to_line(&Request::List),
            "{\"request\":\"list\"}\n",
            "the wire format"
        );
        for bad in [
            &b"{\"request\":\"shutdown\"}"[..],
            b"{\"request\":\"remove\",\"target\":\"x\",\"extra\":1}",
            b"not json",
            b"\xff\xfe",
            b"",
        ] {
            let err = parse_request(bad).unwrap_err();
            assert_eq!(err.lines().count(), 1, "{err}");
        }
        assert!(parse_request(&[b' '; MAX_REQUEST + 1]).is_err());
    }

    #[test]
    fn responses_round_trip() {
        let response = Response::Removed {
            target: "192.0.2.56".into(),
            backend: Some("nftables".into()),
            was_blocked: true,
        };
        assert_eq!(parse_response(to_line(&response).as_bytes()), Ok(response));
        assert!(parse_response(b"{\"response\":\"nope\"}").is_err());
    }

    #[test]
    fn the_setting_takes_a_path_or_off() {
        assert_eq!(ControlPath::parse("off"), Ok(ControlPath::Off));
        assert_eq!(
            ControlPath::parse("/tmp/x.sock").map(|p| p.show()),
            Ok("/tmp/x.sock".to_string())
        );
        assert!(ControlPath::parse("").is_err());
        assert_eq!(Settings::default().control.show(), DEFAULT_SOCKET);
    }
}
