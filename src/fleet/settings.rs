//! The fleet's settings: the flags and config keys ([`Settings`]), what
//! the stage runs with ([`FleetSettings`], made from them by
//! [`Settings::fleet`]) and their parsers.
//!
//! Every parser is `fn(&str) -> Result<T, String>` with a one-line error
//! that names what is wrong, so flags and config keys can use them as they
//! are. [`FleetSettings::resolve`] reads the password and the CA file once,
//! at start-up, with errors that name the file.

use super::wire;
use crate::setting::Value;
use crate::text::printable;
use std::fmt;
use std::path::PathBuf;
use std::time::Duration;

crate::settings! {
    /// Fleet mode: the Redis the nodes share, and this node's name in it.
    pub struct Settings {
        /// Share blocks and detect fleet-wide scans through Redis: redis://[user@]host:port, rediss:// for TLS; several (repeatable) = the seed nodes of a Redis Cluster
        fleet: Vec<FleetUrl> = Vec::new() => "fleet", "URL", restart;
        /// This host's name in the fleet and in the blocks it decides [default: the host name]
        node_name: Option<NodeName> = None => "node-name", "NAME", restart;
        /// File holding the Redis password (one line) [default: $TCPWATCH_FLEET_PASSWORD]
        fleet_password_file: Option<PathBuf> = None => "fleet-password-file", "FILE", restart;
        /// PEM file of the CA that signed the Redis servers' certificates (rediss://) [default: the system's roots]
        fleet_tls_ca: Option<PathBuf> = None => "fleet-tls-ca", "FILE", restart;
        /// A fleet scan: one source touching MORE than N distinct (host, port) pairs across the fleet within --scan-window [default: --scan-ports]
        fleet_scan_pairs: Option<usize> = None => "fleet-scan-pairs", "N", live;
    }
}

impl Settings {
    /// Whether fleet mode is on (`--fleet` given).
    pub fn enabled(&self) -> bool {
        !self.fleet.is_empty()
    }

    /// This node's name: `--node-name`, else the host name.
    pub fn node(&self) -> String {
        match &self.node_name {
            Some(NodeName(name)) => name.clone(),
            None => default_node_name(),
        }
    }

    /// The fleet's scan rule: `--fleet-scan-pairs`, else the local rule's
    /// number (`scan_ports`), over the local rule's window.
    pub fn rule(&self, scan_ports: usize, scan_window: Duration) -> (usize, Duration) {
        (self.fleet_scan_pairs.unwrap_or(scan_ports), scan_window)
    }

    /// What the stage runs with, or `None` without `--fleet`. `scan_ports`
    /// and `scan_window` are the local rule's; `ipv6_prefix` the length
    /// IPv6 sources are counted per.
    pub fn fleet(
        &self,
        scan_ports: usize,
        scan_window: Duration,
        ipv6_prefix: u8,
    ) -> Option<FleetSettings> {
        if !self.enabled() {
            return None;
        }
        let mut settings = FleetSettings::new(self.fleet.clone(), &self.node());
        (settings.scan_pairs, settings.scan_window) = self.rule(scan_ports, scan_window);
        settings.ipv6_prefix = ipv6_prefix;
        settings.password = self.fleet_password_file.clone().map(PasswordSource::File);
        settings.tls_ca = self.fleet_tls_ca.clone();
        Some(settings)
    }
}

/// `--fleet` takes a Redis URL; it shows without its password.
impl Value for FleetUrl {
    fn parse(text: &str) -> Result<Self, String> {
        parse_url(text)
    }
    fn show(&self) -> String {
        self.to_string()
    }
}

/// A node name (`--node-name`): 1 to 64 of `A-Z a-z 0-9 . _ -`, not
/// starting with `-` or `.`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NodeName(pub String);

impl Value for NodeName {
    fn parse(text: &str) -> Result<Self, String> {
        parse_node_name(text).map(NodeName)
    }
    fn show(&self) -> String {
        self.0.clone()
    }
}

/// The environment variable read for the password when no other source is
/// given and the URL carries none.
pub const PASSWORD_ENV: &str = "TCPWATCH_FLEET_PASSWORD";

/// One Redis server: `redis://[user[:password]@]host[:port]` or `rediss://`
/// for TLS. Displayed without its password.
#[derive(Clone, PartialEq, Eq)]
pub struct FleetUrl {
    pub tls: bool,
    pub host: String,
    pub port: u16,
    pub username: Option<String>,
    /// A password written in the URL (allowed; a file or the environment is
    /// better: a command line is visible to every local user).
    pub password: Option<String>,
}

impl fmt::Display for FleetUrl {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let scheme = if self.tls { "rediss" } else { "redis" };
        write!(f, "{scheme}://")?;
        if let Some(user) = &self.username {
            write!(f, "{user}@")?;
        }
        if self.host.contains(':') {
            write!(f, "[{}]:{}", self.host, self.port)
        } else {
            write!(f, "{}:{}", self.host, self.port)
        }
    }
}

impl fmt::Debug for FleetUrl {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "FleetUrl({self})")
    }
}

/// Where the password comes from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PasswordSource {
    /// A file holding the password (one line; a final newline is ignored).
    File(PathBuf),
    /// An environment variable.
    Env(String),
}

/// Limits of what the fleet stage holds and sends; everything it queues is
/// bounded by one of these, and what does not fit is dropped and counted.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FleetLimits {
    /// Block/unblock decisions waiting in the handle's channel.
    pub queue: usize,
    /// Decisions kept while Redis is unreachable (one per target, the
    /// latest wins), published on reconnect.
    pub pending: usize,
    /// Sources aggregated per flush interval.
    pub sources_per_flush: usize,
    /// (host, port) pairs per source per flush interval.
    pub pairs_per_source: usize,
    /// Members kept per source's window in Redis.
    pub pairs_per_window: usize,
    /// (source, host, port) triples remembered as sent recently (a pair
    /// sent less than a quarter window ago is not sent again).
    pub recent_pairs: usize,
    /// Bans this node remembers (its own and the fleet's).
    pub bans: usize,
    /// Length of the change log in Redis (approximate trim); a node that
    /// was away longer than the log reaches reads the whole ban index.
    pub log_len: usize,
    /// Longest remaining time accepted on a fleet ban; longer ones are
    /// ignored as malformed.
    pub max_ttl: Duration,
}

impl Default for FleetLimits {
    fn default() -> Self {
        FleetLimits {
            queue: 1024,
            pending: 10_000,
            sources_per_flush: 4096,
            pairs_per_source: 64,
            pairs_per_window: 1024,
            recent_pairs: 65_536,
            bans: 100_000,
            log_len: 10_000,
            max_ttl: Duration::from_secs(30 * 24 * 3600),
        }
    }
}

/// Everything the fleet stage needs.
#[derive(Debug, Clone)]
pub struct FleetSettings {
    /// One URL: a single server; several: the seed nodes of a Redis Cluster.
    pub urls: Vec<FleetUrl>,
    /// Also a cluster with one seed URL.
    pub cluster: bool,
    /// This node's name in the fleet (the `origin` of its bans).
    pub node_name: String,
    /// Where the password comes from; `None`: the URL's, else
    /// `$TCPWATCH_FLEET_PASSWORD` when set, else none.
    pub password: Option<PasswordSource>,
    /// PEM file of the CA that signed the servers' certificates (`rediss://`);
    /// `None`: the system's roots.
    pub tls_ca: Option<PathBuf>,
    /// A source touching MORE than this many distinct (host, port) pairs
    /// across the fleet within `scan_window` is a fleet scan.
    pub scan_pairs: usize,
    pub scan_window: Duration,
    /// IPv6 sources are counted per prefix of this length.
    pub ipv6_prefix: u8,
    /// How often the aggregated attempts are sent.
    pub flush_interval: Duration,
    /// Time-out of one connection attempt and of one command.
    pub timeout: Duration,
    /// Longest wait between two reconnection attempts (they start at 250ms
    /// and double): 10 s, so a node is back within seconds of its Redis,
    /// and a thousand nodes knock at most 100 times a second on one that
    /// is down.
    pub max_backoff: Duration,
    pub limits: FleetLimits,
}

impl FleetSettings {
    /// Settings with the defaults: `--scan-ports 3 --scan-window 60s`
    /// counted over (host, port) pairs, a flush every second.
    pub fn new(urls: Vec<FleetUrl>, node_name: &str) -> FleetSettings {
        FleetSettings {
            urls,
            cluster: false,
            node_name: node_name.to_string(),
            password: None,
            tls_ca: None,
            scan_pairs: 3,
            scan_window: Duration::from_secs(60),
            ipv6_prefix: 64,
            flush_interval: Duration::from_secs(1),
            timeout: Duration::from_secs(3),
            max_backoff: Duration::from_secs(10),
            limits: FleetLimits::default(),
        }
    }

    /// True for a Redis Cluster (several URLs, or `cluster` set).
    pub fn is_cluster(&self) -> bool {
        self.cluster || self.urls.len() > 1
    }

    /// Checks the settings together and reads the password and CA files.
    /// Errors are one line naming what is wrong.
    pub fn resolve(&self) -> Result<Resolved, String> {
        if self.urls.is_empty() {
            return Err("fleet: no Redis URL".into());
        }
        wire::check_node_name(&self.node_name)
            .map_err(|e| format!("invalid fleet node name {:?}: {e}", self.node_name))?;
        let tls = self.urls[0].tls;
        if self.urls.iter().any(|u| u.tls != tls) {
            return Err("fleet: URLs mix redis:// and rediss://".into());
        }
        let first = &self.urls[0];
        if self
            .urls
            .iter()
            .any(|u| u.username != first.username || u.password != first.password)
        {
            return Err("fleet: the cluster URLs carry different users or passwords".into());
        }
        if self.tls_ca.is_some() && !tls {
            return Err(
                "fleet: a TLS CA file is given but the URL is redis://, not rediss://".into(),
            );
        }
        if self.scan_pairs == 0 {
            return Err("fleet: scan pairs must be at least 1".into());
        }
        if self.scan_window < Duration::from_millis(100) {
            return Err("fleet: scan window shorter than 100ms".into());
        }
        if self.flush_interval < Duration::from_millis(10) || self.flush_interval > self.scan_window
        {
            return Err("fleet: flush interval must be 10ms or more and at most the window".into());
        }
        if !(wire::MIN_PREFIX_V6..=128).contains(&self.ipv6_prefix) {
            return Err(format!(
                "fleet: IPv6 prefix length {} is not between {} and 128",
                self.ipv6_prefix,
                wire::MIN_PREFIX_V6
            ));
        }
        let password = match &self.password {
            Some(PasswordSource::File(path)) => Some(read_password_file(path)?),
            Some(PasswordSource::Env(name)) => match std::env::var(name) {
                Ok(p) => Some(
                    check_password(&p).map_err(|e| format!("fleet password in ${name}: {e}"))?,
                ),
                Err(_) => {
                    return Err(format!(
                        "fleet password: environment variable {name} is not set"
                    ))
                }
            },
            None => match (&first.password, std::env::var(PASSWORD_ENV)) {
                (Some(p), _) => Some(p.clone()),
                (None, Ok(p)) if !p.is_empty() => Some(
                    check_password(&p)
                        .map_err(|e| format!("fleet password in ${PASSWORD_ENV}: {e}"))?,
                ),
                _ => None,
            },
        };
        let tls_ca = match &self.tls_ca {
            Some(path) => Some(read_ca_file(path)?),
            None => None,
        };
        Ok(Resolved {
            password,
            tls_ca,
            tls,
        })
    }
}

/// What [`FleetSettings::resolve`] read.
#[derive(Clone)]
pub struct Resolved {
    pub password: Option<String>,
    /// The CA file's PEM bytes.
    pub tls_ca: Option<Vec<u8>>,
    pub tls: bool,
}

impl fmt::Debug for Resolved {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Resolved")
            .field("password", &self.password.as_ref().map(|_| "***"))
            .field("tls_ca", &self.tls_ca.as_ref().map(Vec::len))
            .field("tls", &self.tls)
            .finish()
    }
}

fn check_password(p: &str) -> Result<String, String> {
    let p = p.strip_suffix('\n').unwrap_or(p);
    let p = p.strip_suffix('\r').unwrap_or(p);
    if p.is_empty() {
        return Err("empty".into());
    }
    if p.len() > 1024 {
        return Err("longer than 1024 bytes".into());
    }
    if p.chars().any(char::is_control) {
        return Err("holds a control character (more than one line?)".into());
    }
    Ok(p.to_string())
}

fn read_password_file(path: &std::path::Path) -> Result<String, String> {
    let text = std::fs::read_to_string(path)
        .map_err(|e| format!("fleet password file {}: {e}", path.display()))?;
    check_password(&text).map_err(|e| format!("fleet password file {}: {e}", path.display()))
}

fn read_ca_file(path: &std::path::Path) -> Result<Vec<u8>, String> {
    let pem =
        std::fs::read(path).map_err(|e| format!("fleet TLS CA file {}: {e}", path.display()))?;
    if !pem.windows(27).any(|w| w == b"-----BEGIN CERTIFICATE-----") {
        return Err(format!(
            "fleet TLS CA file {}: no PEM certificate in it",
            path.display()
        ));
    }
    Ok(pem)
}

/// Parses one `--fleet` URL: `redis://` or `rediss://`, a host (name, IPv4
/// or `[IPv6]`), an optional port (default 6379), optional `user[:password]@`
/// (percent-encoded), and no path other than `/` or `/0` (a cluster has only
/// database 0).
pub fn parse_url(text: &str) -> Result<FleetUrl, String> {
    let fail = |why: &str| format!("invalid fleet URL {}: {why}", redact(text));
    let (tls, rest) = if let Some(r) = text.strip_prefix("redis://") {
        (false, r)
    } else if let Some(r) = text.strip_prefix("rediss://") {
        (true, r)
    } else {
        return Err(fail("must start with redis:// or rediss://"));
    };
    if rest.contains(['?', '#']) {
        return Err(fail("query and fragment are not supported"));
    }
    let (authority, path) = match rest.find('/') {
        Some(i) => (&rest[..i], &rest[i..]),
        None => (rest, ""),
    };
    if !matches!(path, "" | "/" | "/0") {
        return Err(fail("only database 0 is supported"));
    }
    let (userinfo, hostport) = match authority.rfind('@') {
        Some(i) => (Some(&authority[..i]), &authority[i + 1..]),
        None => (None, authority),
    };
    let (username, password) = match userinfo {
        None => (None, None),
        Some(info) => {
            let (u, p) = match info.split_once(':') {
                Some((u, p)) => (u, Some(p)),
                None => (info, None),
            };
            let u = percent_decode(u).ok_or_else(|| fail("bad %-escape in the user"))?;
            let p = match p {
                Some(p) => {
                    Some(percent_decode(p).ok_or_else(|| fail("bad %-escape in the password"))?)
                }
                None => None,
            };
            let u = if u.is_empty() { None } else { Some(u) };
            if u.as_deref()
                .is_some_and(|u| u.chars().any(|c| c.is_control() || c == ' '))
            {
                return Err(fail("bad character in the user name"));
            }
            if p.as_deref()
                .is_some_and(|p| p.is_empty() || p.chars().any(char::is_control))
            {
                return Err(fail("empty password or control character in it"));
            }
            (u, p)
        }
    };
    let (host, port) = if let Some(v6) = hostport.strip_prefix('[') {
        let (h, after) = v6
            .split_once(']')
            .ok_or_else(|| fail("unclosed '[' in the host"))?;
        h.parse::<std::net::Ipv6Addr>()
            .map_err(|_| fail("bad IPv6 address"))?;
        let port = match after {
            "" => None,
            p => Some(p.strip_prefix(':').ok_or_else(|| fail("junk after ']'"))?),
        };
        (h.to_string(), port)
    } else {
        match hostport.rsplit_once(':') {
            Some((h, p)) => (h.to_string(), Some(p)),
            None => (hostport.to_string(), None),
        }
    };
    if host.is_empty() {
        return Err(fail("no host"));
    }
    if !host.contains(':')
        && !host
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'-' | b'_'))
    {
        return Err(fail("bad character in the host"));
    }
    let port = match port {
        None => 6379,
        Some(p) => match p.parse::<u16>() {
            Ok(n) if n != 0 && p.bytes().all(|b| b.is_ascii_digit()) => n,
            _ => return Err(fail("the port is not a number from 1 to 65535")),
        },
    };
    Ok(FleetUrl {
        tls,
        host,
        port,
        username,
        password,
    })
}

/// The URL with any password replaced by `***`, for error messages.
pub fn redact(text: &str) -> String {
    let Some(scheme_end) = text.find("://") else {
        return text.chars().filter(|c| !c.is_control()).collect();
    };
    let rest = &text[scheme_end + 3..];
    let authority_end = rest.find('/').unwrap_or(rest.len());
    let authority = &rest[..authority_end];
    let out = match authority.rfind('@') {
        Some(at) => match authority[..at].split_once(':') {
            Some((user, _)) => format!(
                "{}{user}:***{}{}",
                &text[..scheme_end + 3],
                &authority[at..],
                &rest[authority_end..]
            ),
            None => text.to_string(),
        },
        None => text.to_string(),
    };
    out.chars().filter(|c| !c.is_control()).collect()
}

fn percent_decode(s: &str) -> Option<String> {
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'%' {
            let hex = bytes.get(i + 1..i + 3)?;
            let hex = std::str::from_utf8(hex).ok()?;
            if !hex.bytes().all(|b| b.is_ascii_hexdigit()) {
                return None;
            }
            out.push(u8::from_str_radix(hex, 16).ok()?);
            i += 3;
        } else {
            out.push(bytes[i]);
            i += 1;
        }
    }
    String::from_utf8(out).ok()
}

/// Parses `--node-name`.
pub fn parse_node_name(text: &str) -> Result<String, String> {
    wire::check_node_name(text)
        .map(|()| text.to_string())
        .map_err(|e| {
            format!(
                "invalid node name '{}': {e}",
                printable(&text.chars().take(80).collect::<String>())
            )
        })
}

/// The default node name: the host name, cut to what a node name allows
/// (other characters become `-`); `node` when there is none.
pub fn default_node_name() -> String {
    let raw = crate::os::host::name().unwrap_or_default();
    let mut name: String = raw
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-') {
                c
            } else {
                '-'
            }
        })
        .take(wire::MAX_NODE_NAME)
        .collect();
    while name.starts_with(['-', '.']) {
        name.remove(0);
    }
    if name.is_empty() {
        "node".into()
    } else {
        name
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn urls() {
        let u = parse_url("redis://127.0.0.1:6390").unwrap();
        assert_eq!((u.tls, u.host.as_str(), u.port), (false, "127.0.0.1", 6390));
        let u = parse_url("rediss://tcpwatch:s%40cret@redis.example:7000/0").unwrap();
        assert!(u.tls);
        assert_eq!(u.username.as_deref(), Some("tcpwatch"));
        assert_eq!(u.password.as_deref(), Some("s@cret"));
        assert_eq!(u.to_string(), "rediss://tcpwatch@redis.example:7000");
        let u = parse_url("redis://:pw@[::1]").unwrap();
        assert_eq!(
            (u.host.as_str(), u.port, u.username.clone()),
            ("::1", 6379, None)
        );
        assert_eq!(u.to_string(), "redis://[::1]:6379");
        for bad in [
            "http://x",
            "redis://",
            "redis://h:0",
            "redis://h:99999",
            "redis://h:x",
            "redis://h/1",
            "redis://h?x=1",
            "redis://[::1",
            "redis://h o",
            "redis://u:%zz@h",
        ] {
            let e = parse_url(bad).unwrap_err();
            assert!(e.starts_with("invalid fleet URL"), "{e}");
        }
        let e = parse_url("redis://u:topsecret@h:1/5").unwrap_err();
        assert!(!e.contains("topsecret"), "{e}");
    }

    #[test]
    fn password_files() {
        let dir = std::env::temp_dir().join(format!("tcpwatch-fleet-pw-{}", std::process::id()));
        std::fs::write(&dir, "s3cret\n").unwrap();
        let mut s = FleetSettings::new(vec![parse_url("redis://h").unwrap()], "a");
        s.password = Some(PasswordSource::File(dir.clone()));
        assert_eq!(s.resolve().unwrap().password.as_deref(), Some("s3cret"));
        std::fs::write(&dir, "two\nlines\n").unwrap();
        assert!(s.resolve().unwrap_err().contains("control character"));
        std::fs::remove_file(&dir).unwrap();
        let e = s.resolve().unwrap_err();
        assert!(e.starts_with("fleet password file "), "{e}");
        assert!(!e.contains('\n'));
    }

    #[test]
    fn node_names() {
        assert_eq!(parse_node_name("node-b").unwrap(), "node-b");
        assert!(parse_node_name("node b").unwrap_err().contains("node name"));
        assert!(wire::check_node_name(&default_node_name()).is_ok());
    }
}
