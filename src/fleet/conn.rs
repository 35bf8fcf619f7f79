//! Connections to Redis: one server or a Redis Cluster, plain or TLS, with
//! a user and a password. Two connections per session: one for commands
//! and scripts, one for the blocking read of the change log (a blocking
//! command would hold up everything queued behind it).

use super::settings::{FleetSettings, FleetUrl, Resolved};
use redis::aio::{ConnectionLike, MultiplexedConnection};
use redis::cluster::ClusterClient;
use redis::cluster_async::ClusterConnection;
use redis::{
    AsyncConnectionConfig, Client, Cmd, ConnectionAddr, ConnectionInfo, IntoConnectionInfo,
    Pipeline, RedisConnectionInfo, RedisFuture, RedisResult, TlsCertificates, Value,
};
use std::time::Duration;

/// A connection to one server or to a cluster.
#[derive(Clone)]
pub(super) enum Conn {
    Single(MultiplexedConnection),
    Cluster(ClusterConnection),
}

impl ConnectionLike for Conn {
    fn req_packed_command<'a>(&'a mut self, cmd: &'a Cmd) -> RedisFuture<'a, Value> {
        match self {
            Conn::Single(c) => c.req_packed_command(cmd),
            Conn::Cluster(c) => c.req_packed_command(cmd),
        }
    }

    fn req_packed_commands<'a>(
        &'a mut self,
        pipeline: &'a Pipeline,
        offset: usize,
        count: usize,
    ) -> RedisFuture<'a, Vec<Value>> {
        match self {
            Conn::Single(c) => c.req_packed_commands(pipeline, offset, count),
            Conn::Cluster(c) => c.req_packed_commands(pipeline, offset, count),
        }
    }

    fn get_db(&self) -> i64 {
        0
    }
}

enum Clients {
    Single(Box<Client>),
    Cluster {
        commands: Box<ClusterClient>,
        reader: Box<ClusterClient>,
    },
}

/// Makes the connections of a session.
pub(super) struct Connector {
    clients: Clients,
    timeout: Duration,
    read_timeout: Duration,
    description: String,
}

impl Connector {
    /// Builds the clients (no connection yet). `block` is how long one
    /// blocking read of the log waits.
    pub(super) fn new(
        settings: &FleetSettings,
        resolved: &Resolved,
        cluster: bool,
        block: Duration,
    ) -> Result<Connector, String> {
        let infos: Vec<ConnectionInfo> = settings
            .urls
            .iter()
            .map(|u| connection_info(u, resolved))
            .collect::<Result<_, _>>()?;
        let certs = resolved.tls.then(|| TlsCertificates {
            client_tls: None,
            root_cert: resolved.tls_ca.clone(),
        });
        let timeout = settings.timeout;
        let read_timeout = block + timeout;
        let description = if cluster {
            format!(
                "Redis Cluster via {}",
                settings
                    .urls
                    .iter()
                    .map(ToString::to_string)
                    .collect::<Vec<_>>()
                    .join(",")
            )
        } else {
            settings.urls[0].to_string()
        };
        let fail = |e: redis::RedisError| format!("fleet: {description}: {}", one_line(&e));
        let clients = if cluster {
            let build = |response: Duration| {
                let mut b = ClusterClient::builder(infos.clone())
                    .connection_timeout(timeout)
                    .response_timeout(response)
                    .retries(2)
                    .min_retry_wait(50)
                    .max_retry_wait(500);
                if let Some(c) = &certs {
                    b = b.certs(c.clone());
                }
                b.build()
            };
            Clients::Cluster {
                commands: Box::new(build(timeout).map_err(fail)?),
                reader: Box::new(build(read_timeout).map_err(fail)?),
            }
        } else {
            let info = infos[0].clone();
            let client = match &certs {
                Some(c) => Client::build_with_tls(info, c.clone()),
                None => Client::open(info),
            };
            Clients::Single(Box::new(client.map_err(fail)?))
        };
        Ok(Connector {
            clients,
            timeout,
            read_timeout,
            description,
        })
    }

    /// `redis://host:port` or `Redis Cluster via ...`, never a password.
    pub(super) fn description(&self) -> &str {
        &self.description
    }

    pub(super) fn is_cluster(&self) -> bool {
        matches!(self.clients, Clients::Cluster { .. })
    }

    /// The connection for commands and scripts.
    pub(super) async fn commands(&self) -> RedisResult<Conn> {
        self.connect(false).await
    }

    /// The connection for the blocking read of the log.
    pub(super) async fn reader(&self) -> RedisResult<Conn> {
        self.connect(true).await
    }

    async fn connect(&self, reader: bool) -> RedisResult<Conn> {
        let response = if reader {
            self.read_timeout
        } else {
            self.timeout
        };
        let attempt = async {
            match &self.clients {
                Clients::Single(client) => {
                    let config = AsyncConnectionConfig::new()
                        .set_connection_timeout(Some(self.timeout))
                        .set_response_timeout(Some(response));
                    client
                        .get_multiplexed_async_connection_with_config(&config)
                        .await
                        .map(Conn::Single)
                }
                Clients::Cluster {
                    commands,
                    reader: r,
                } => {
                    let client = if reader { r } else { commands };
                    client.get_async_connection().await.map(Conn::Cluster)
                }
            }
        };
        // Everything a connection does before it is ready (TCP, TLS, AUTH,
        // the cluster's slots) within a few time-outs.
        match tokio::time::timeout(self.timeout * 3, attempt).await {
            Ok(r) => r,
            Err(_) => Err(redis::RedisError::from(std::io::Error::new(
                std::io::ErrorKind::TimedOut,
                "connection timed out",
            ))),
        }
    }
}

fn connection_info(url: &FleetUrl, resolved: &Resolved) -> Result<ConnectionInfo, String> {
    let addr = if url.tls {
        ConnectionAddr::TcpTls {
            host: url.host.clone(),
            port: url.port,
            insecure: false,
            tls_params: None,
        }
    } else {
        ConnectionAddr::Tcp(url.host.clone(), url.port)
    };
    let mut redis = RedisConnectionInfo::default().set_skip_set_lib_name();
    if let Some(user) = &url.username {
        redis = redis.set_username(user);
    }
    if let Some(password) = &resolved.password {
        redis = redis.set_password(password);
    }
    addr.into_connection_info()
        .map(|info| info.set_redis_settings(redis))
        .map_err(|e| format!("fleet: {url}: {}", one_line(&e)))
}

/// An error as one printable line.
pub(super) fn one_line(e: &dyn std::fmt::Display) -> String {
    let text = e.to_string();
    let mut out = String::with_capacity(text.len());
    for c in text.chars() {
        if c.is_control() {
            if !out.ends_with(' ') {
                out.push(' ');
            }
        } else {
            out.push(c);
        }
    }
    out.trim().chars().take(300).collect()
}
