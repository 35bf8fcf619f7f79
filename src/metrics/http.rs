//! The metrics endpoint: `/metrics` (content-negotiated), `/healthz`
//! (readiness: the source runs without a fault), `/livez` (liveness: the
//! source runs) and a landing page at `/`.

use super::{wants_openmetrics, Metrics, OPENMETRICS_CONTENT_TYPE, TEXT_CONTENT_TYPE};
use axum::extract::State;
use axum::http::{header, HeaderMap, StatusCode};
use axum::response::{Html, IntoResponse, Response};
use axum::routing::get;
use axum::Router;
use std::net::SocketAddr;
use std::sync::Arc;

const LANDING: &str = "<!DOCTYPE html>\n<html><head><title>tcpwatch</title></head>\n<body><h1>tcpwatch</h1><p><a href=\"/metrics\">Metrics</a> &middot; <a href=\"/healthz\">Health</a> &middot; <a href=\"/livez\">Liveness</a></p></body></html>\n";

/// Binds the address now, so that a bad address is a start-up error (and
/// the firewall is never touched by an agent that is about to exit).
pub fn bind(addr: SocketAddr) -> anyhow::Result<std::net::TcpListener> {
    try_bind(addr).map_err(|e| anyhow::anyhow!(describe(addr, &e)))
}

/// [`bind`] with the OS error, for callers that treat a taken port
/// (`AddrInUse`) differently.
pub fn try_bind(addr: SocketAddr) -> std::io::Result<std::net::TcpListener> {
    let listener = std::net::TcpListener::bind(addr)?;
    listener.set_nonblocking(true)?;
    Ok(listener)
}

/// `metrics address ADDR: CAUSE`, one short line.
pub fn describe(addr: SocketAddr, e: &std::io::Error) -> String {
    // "Address in use (os error 98)" -> "Address in use".
    let text = e.to_string();
    let text = text.split(" (os error").next().unwrap_or(&text);
    format!("metrics address {addr}: {text}")
}

pub fn router(metrics: Arc<Metrics>) -> Router {
    Router::new()
        .route("/", get(|| async { Html(LANDING) }))
        .route("/metrics", get(scrape))
        .route("/healthz", get(health))
        .route("/livez", get(live))
        .with_state(metrics)
}

/// Serves until the task is dropped.
pub async fn serve(listener: std::net::TcpListener, metrics: Arc<Metrics>) -> anyhow::Result<()> {
    let listener = tokio::net::TcpListener::from_std(listener)?;
    axum::serve(listener, router(metrics)).await?;
    Ok(())
}

async fn scrape(State(metrics): State<Arc<Metrics>>, headers: HeaderMap) -> Response {
    let accept = headers.get(header::ACCEPT).and_then(|v| v.to_str().ok());
    let (content_type, body) = if wants_openmetrics(accept) {
        (OPENMETRICS_CONTENT_TYPE, metrics.openmetrics())
    } else {
        (TEXT_CONTENT_TYPE, metrics.prometheus_text())
    };
    ([(header::CONTENT_TYPE, content_type)], body).into_response()
}

async fn health(State(metrics): State<Arc<Metrics>>) -> Response {
    match metrics.source_health().ready() {
        Ok(()) => (StatusCode::OK, "ok\n").into_response(),
        Err(why) => (StatusCode::SERVICE_UNAVAILABLE, format!("{why}\n")).into_response(),
    }
}

/// For a liveness probe: a source fault (an interface gone, a table
/// unreadable) makes `/healthz` fail but is waited out, not cured by a
/// restart; only a source that has ended is.
async fn live(State(metrics): State<Arc<Metrics>>) -> Response {
    if metrics.source_health().running() {
        (StatusCode::OK, "ok\n").into_response()
    } else {
        (StatusCode::SERVICE_UNAVAILABLE, "source not running\n").into_response()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::{Read, Write};

    /// One raw HTTP/1.1 request against a served router; returns the
    /// response head and body.
    async fn request(metrics: Arc<Metrics>, path: &str, accept: Option<&str>) -> (String, String) {
        let listener = bind("127.0.0.1:0".parse().unwrap()).unwrap();
        let addr = listener.local_addr().unwrap();
        let server = tokio::spawn(serve(listener, metrics));
        let path = path.to_string();
        let accept = accept.map(str::to_string);
        let raw = tokio::task::spawn_blocking(move || {
            let mut s = std::net::TcpStream::connect(addr).unwrap();
            let accept = accept
                .map(|a| format!("Accept: {a}\r\n"))
                .unwrap_or_default();
            write!(
                s,
                "GET {path} HTTP/1.1\r\nHost: x\r\n{accept}Connection: close\r\n\r\n"
            )
            .unwrap();
            let mut out = String::new();
            s.read_to_string(&mut out).unwrap();
            out
        })
        .await
        .unwrap();
        server.abort();
        let (head, body) = raw.split_once("\r\n\r\n").unwrap();
        (head.to_lowercase(), body.to_string())
    }

    #[tokio::test]
    async fn negotiates_the_format() {
        let m = Metrics::new("procfs", None);
        let (head, body) = request(m.clone(), "/metrics", None).await;
        assert!(head.starts_with("http/1.1 200"), "{head}");
        assert!(
            head.contains("content-type: text/plain; version=0.0.4; charset=utf-8"),
            "{head}"
        );
        assert!(body.contains("# TYPE tcpwatch_new_connections_total counter"));
        assert!(!body.contains("# EOF"));

        let (head, body) = request(
            m,
            "/metrics",
            Some("application/openmetrics-text;version=1.0.0"),
        )
        .await;
        assert!(
            head.contains(
                "content-type: application/openmetrics-text; version=1.0.0; charset=utf-8"
            ),
            "{head}"
        );
        assert!(body.contains("# EOF"));
    }

    #[tokio::test]
    async fn health_follows_the_source() {
        let m = Metrics::new("procfs", None);
        let (head, _) = request(m.clone(), "/healthz", None).await;
        assert!(head.starts_with("http/1.1 503"), "{head}");
        let (head, _) = request(m.clone(), "/livez", None).await;
        assert!(head.starts_with("http/1.1 503"), "{head}");
        let source = m.source_health();
        source.set_running(true);
        let (head, body) = request(m.clone(), "/healthz", None).await;
        assert!(head.starts_with("http/1.1 200"), "{head}");
        assert_eq!(body, "ok\n");
        // Two faults at once (two interfaces down): healthy only when both end.
        source.fault(true);
        source.fault(true);
        let (head, body) = request(m.clone(), "/healthz", None).await;
        assert!(head.starts_with("http/1.1 503"), "{head}");
        assert_eq!(body, "source failing\n");
        let (head, _) = request(m.clone(), "/livez", None).await;
        assert!(
            head.starts_with("http/1.1 200"),
            "a fault is not death: {head}"
        );
        source.fault(false);
        let (head, _) = request(m.clone(), "/healthz", None).await;
        assert!(head.starts_with("http/1.1 503"), "{head}");
        source.fault(false);
        source.fault(false);
        let (head, _) = request(m.clone(), "/healthz", None).await;
        assert!(head.starts_with("http/1.1 200"), "{head}");
        let (head, body) = request(m, "/", None).await;
        assert!(head.contains("text/html"), "{head}");
        assert!(body.contains("href=\"/metrics\""));
    }

    #[test]
    fn a_taken_port_is_one_short_line() {
        let first = bind("127.0.0.1:0".parse().unwrap()).unwrap();
        let addr = first.local_addr().unwrap();
        let err = bind(addr).unwrap_err().to_string();
        assert_eq!(
            err,
            format!("metrics address {addr}: Address already in use")
        );
    }
}
