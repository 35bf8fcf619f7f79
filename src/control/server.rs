//! Serves the control socket: each connection is checked (root or the
//! agent's own user), its one request read within the limits of the module
//! docs, handed to the [`Handler`] (the pipeline) and answered.

use super::{parse_request, to_line, Request, Response, CONCURRENT, MAX_REQUEST, TIMEOUT};
use futures_util::future::BoxFuture;
use std::sync::Arc;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::UnixStream;

/// Answers requests: the pipeline, which reaches the stages.
pub trait Handler: Send + Sync + 'static {
    fn handle(&self, request: Request) -> BoxFuture<'static, Response>;
}

/// Serves until the task is dropped.
pub async fn serve(
    listener: std::os::unix::net::UnixListener,
    handler: Arc<dyn Handler>,
) -> anyhow::Result<()> {
    let listener = tokio::net::UnixListener::from_std(listener)?;
    let own = crate::os::socket::own_uid().ok();
    let slots = Arc::new(tokio::sync::Semaphore::new(CONCURRENT));
    loop {
        let permit = slots.clone().acquire_owned().await?;
        let stream = match listener.accept().await {
            Ok((stream, _)) => stream,
            Err(_) => {
                // Out of file descriptors, say: wait rather than spin.
                tokio::time::sleep(std::time::Duration::from_millis(100)).await;
                continue;
            }
        };
        let handler = handler.clone();
        tokio::spawn(async move {
            let _permit = permit;
            let _ = answer(stream, handler.as_ref(), own).await;
        });
    }
}

/// Whether the peer of `stream` may talk to the agent: root, or the user
/// the agent runs as.
fn allowed(stream: &UnixStream, own: Option<u32>) -> bool {
    stream
        .peer_cred()
        .is_ok_and(|c| c.uid() == 0 || Some(c.uid()) == own)
}

async fn answer(
    mut stream: UnixStream,
    handler: &dyn Handler,
    own: Option<u32>,
) -> std::io::Result<()> {
    let response = if !allowed(&stream, own) {
        Response::Refused {
            message: "permission denied: the agent answers root and its own user only".into(),
        }
    } else {
        match tokio::time::timeout(TIMEOUT, read_request(&mut stream)).await {
            Ok(Ok(bytes)) => match parse_request(&bytes) {
                Ok(request) => handler.handle(request).await,
                Err(message) => Response::Refused { message },
            },
            Ok(Err(e)) => Response::Refused {
                message: format!("cannot read the request: {e}"),
            },
            Err(_) => Response::Refused {
                message: format!("no request within {}s", TIMEOUT.as_secs()),
            },
        }
    };
    stream.write_all(to_line(&response).as_bytes()).await?;
    stream.shutdown().await
}

/// Reads up to the first line end or the end of the stream, at most one
/// byte more than [`MAX_REQUEST`] (so an over-long request is refused).
async fn read_request(stream: &mut UnixStream) -> std::io::Result<Vec<u8>> {
    let mut bytes = Vec::new();
    let mut chunk = [0u8; 1024];
    loop {
        let n = stream.read(&mut chunk).await?;
        if n == 0 {
            return Ok(bytes);
        }
        bytes.extend_from_slice(&chunk[..n]);
        if let Some(end) = bytes.iter().position(|b| *b == b'\n') {
            bytes.truncate(end);
            return Ok(bytes);
        }
        if bytes.len() > MAX_REQUEST {
            return Ok(bytes);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::control::client::ask;
    use crate::control::Request;

    struct Echo;

    impl Handler for Echo {
        fn handle(&self, request: Request) -> BoxFuture<'static, Response> {
            Box::pin(async move {
                Response::Refused {
                    message: format!("{request:?}"),
                }
            })
        }
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn answers_one_request_a_connection_and_refuses_garbage() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("tcpwatch.sock");
        let listener = crate::os::socket::bind_private(&path).unwrap();
        let server = tokio::spawn(serve(listener, Arc::new(Echo)));
        let asked = path.clone();
        let answer = tokio::task::spawn_blocking(move || ask(&asked, &Request::List))
            .await
            .unwrap()
            .unwrap();
        assert_eq!(
            answer,
            Some(Response::Refused {
                message: "List".into()
            })
        );
        // Garbage, then a request too long: one refusal each.
        for bad in [b"garbage\n".to_vec(), vec![b'x'; MAX_REQUEST + 100]] {
            let raw = path.clone();
            let text = tokio::task::spawn_blocking(move || {
                use std::io::{Read, Write};
                let mut s = std::os::unix::net::UnixStream::connect(&raw).unwrap();
                let _ = s.write_all(&bad);
                let mut out = String::new();
                s.read_to_string(&mut out).unwrap();
                out
            })
            .await
            .unwrap();
            assert!(text.starts_with("{\"response\":\"refused\""), "{text}");
            assert_eq!(text.lines().count(), 1);
        }
        server.abort();
        // Nobody listening: no agent.
        let gone = dir.path().join("none.sock");
        let none = tokio::task::spawn_blocking(move || ask(&gone, &Request::List))
            .await
            .unwrap()
            .unwrap();
        assert_eq!(none, None);
    }
}
