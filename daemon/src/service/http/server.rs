//! The HTTP server under the API: the accept loop with its connection limit (one more
//! connection is answered 503 with `Retry-After` and closed), HTTPS when configured,
//! hyper's HTTP/1.1 with a header time limit and size limit, a graceful stop, and the
//! watch that tells a waiting handler its client hung up ([`ClientGone`]).

use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use axum::body::Body;
use axum::http::StatusCode;
use hyper_util::rt::{TokioIo, TokioTimer};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{Semaphore, watch};
use tokio::task::JoinSet;
use tower::ServiceExt;

use super::MAX_HEAD_BYTES;
use super::errors::ApiError;

/// The accept loop.
pub(super) async fn serve(
    listener: TcpListener,
    tls: Option<tokio_rustls::TlsAcceptor>,
    app: Router,
    max_connections: usize,
    client_timeout: Duration,
    mut stop: watch::Receiver<bool>,
) {
    let permits = Arc::new(Semaphore::new(max_connections));
    let mut connections = JoinSet::new();
    loop {
        let (stream, peer) = tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok(a) => a,
                Err(e) => {
                    // Out of file descriptors and the like: wait rather than spin.
                    tracing::warn!("HTTP accept: {e}");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                    continue;
                }
            },
            _ = stopped(&mut stop) => break,
        };
        while connections.try_join_next().is_some() {}
        let Ok(permit) = Arc::clone(&permits).try_acquire_owned() else {
            connections.spawn(refuse_connection(stream));
            continue;
        };
        let app = app.clone();
        let stop = stop.clone();
        let tls = tls.clone();
        connections.spawn(async move {
            let _ = stream.set_nodelay(true);
            let (stream, gone, watcher) = match watch_hang_up(stream) {
                Ok(w) => w,
                Err(e) => {
                    tracing::debug!(%peer, "HTTP connection lost at accept: {e}");
                    return;
                }
            };
            match tls {
                None => serve_connection(stream, app, client_timeout, stop, gone).await,
                Some(acceptor) => {
                    match tokio::time::timeout(client_timeout, acceptor.accept(stream)).await {
                        Ok(Ok(tls_stream)) => {
                            serve_connection(tls_stream, app, client_timeout, stop, gone).await;
                        }
                        Ok(Err(e)) => tracing::debug!(%peer, "TLS handshake: {e}"),
                        Err(_) => tracing::debug!(%peer, "TLS handshake timed out"),
                    }
                }
            }
            if let Some(w) = watcher {
                w.abort();
            }
            tracing::trace!(%peer, "HTTP connection closed");
            drop(permit);
        });
    }
    drop(listener);
    while connections.join_next().await.is_some() {}
}

/// Serves one connection until it closes, or, after `stop`, until its current request is
/// answered.
async fn serve_connection<S>(
    stream: S,
    app: Router,
    client_timeout: Duration,
    mut stop: watch::Receiver<bool>,
    gone: ClientGone,
) where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
{
    let service = hyper::service::service_fn(move |req: hyper::Request<hyper::body::Incoming>| {
        let mut req = req.map(Body::new);
        req.extensions_mut().insert(gone.clone());
        app.clone().oneshot(req)
    });
    let conn = hyper::server::conn::http1::Builder::new()
        .timer(TokioTimer::new())
        .header_read_timeout(client_timeout)
        .max_buf_size(MAX_HEAD_BYTES)
        .serve_connection(TokioIo::new(stream), service);
    let mut conn = std::pin::pin!(conn);
    tokio::select! {
        r = conn.as_mut() => {
            if let Err(e) = r {
                tracing::debug!("HTTP connection: {e}");
            }
            return;
        }
        _ = stopped(&mut stop) => {}
    }
    conn.as_mut().graceful_shutdown();
    let _ = conn.await;
}

/// Turns true when the client has closed its connection. hyper notices a closed
/// connection only when it reads or writes, and a handler waiting for a queued request's
/// final does neither: this is how that handler learns that nobody waits for the answer.
#[derive(Clone, Debug)]
pub struct ClientGone(pub watch::Receiver<bool>);

impl ClientGone {
    /// Resolves once the client has hung up (never, for a connection not watched).
    pub async fn wait(&mut self) {
        if self.0.wait_for(|g| *g).await.is_err() {
            std::future::pending::<()>().await;
        }
    }
}

/// Watches `stream` for the client hanging up: a second handle on the same socket peeks
/// at it, and end-of-file (nothing left to read, the peer closed) turns [`ClientGone`]
/// true. Returns the stream to serve, the flag, and the watcher task (abort it when the
/// connection ends). Without a second handle (a descriptor limit), nothing is watched.
fn watch_hang_up(
    stream: TcpStream,
) -> std::io::Result<(TcpStream, ClientGone, Option<tokio::task::JoinHandle<()>>)> {
    let (tx, rx) = watch::channel(false);
    let gone = ClientGone(rx);
    let std = stream.into_std()?;
    let clone = std.try_clone();
    let stream = TcpStream::from_std(std)?;
    let watcher = match clone.and_then(TcpStream::from_std) {
        Ok(w) => w,
        Err(e) => {
            tracing::debug!("cannot watch an HTTP connection for hang-ups: {e}");
            return Ok((stream, gone, None));
        }
    };
    let task = tokio::spawn(async move {
        let mut byte = [0u8; 1];
        loop {
            match watcher.peek(&mut byte).await {
                Ok(0) | Err(_) => {
                    let _ = tx.send(true);
                    return;
                }
                // Data hyper has not read yet (the next request): look again later.
                Ok(_) => tokio::time::sleep(Duration::from_millis(200)).await,
            }
        }
    });
    Ok((stream, gone, Some(task)))
}

/// Resolves once `stop` turns true (or its sender is gone).
async fn stopped(stop: &mut watch::Receiver<bool>) {
    let _ = stop.wait_for(|s| *s).await;
}

/// Answers a connection over the limit with 503 and closes it.
async fn refuse_connection(mut stream: TcpStream) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let body = ApiError {
        retry_after: Some(1),
        ..ApiError::new(
            StatusCode::SERVICE_UNAVAILABLE,
            "server_error",
            "too_many_connections",
            "too many open connections; try again shortly",
        )
    }
    .body()
    .to_string();
    let response = format!(
        "HTTP/1.1 503 Service Unavailable\r\ncontent-type: application/json\r\nretry-after: 1\r\n\
         connection: close\r\ncontent-length: {}\r\n\r\n{body}",
        body.len()
    );
    // Read what the client sends first (up to the end of its head, briefly), and drain
    // after: a socket closed with unread data is reset, and the client would see a reset
    // instead of this answer.
    let mut buf = vec![0u8; 8192];
    let _ = tokio::time::timeout(Duration::from_millis(500), async {
        let mut seen = Vec::new();
        while let Ok(n) = stream.read(&mut buf).await {
            if n == 0 {
                break;
            }
            seen.extend_from_slice(&buf[..n]);
            if seen.windows(4).any(|w| w == b"\r\n\r\n") || seen.len() > MAX_HEAD_BYTES {
                break;
            }
        }
    })
    .await;
    let _ = tokio::time::timeout(Duration::from_secs(2), async {
        let _ = stream.write_all(response.as_bytes()).await;
        let _ = stream.shutdown().await;
        while let Ok(n) = stream.read(&mut buf).await {
            if n == 0 {
                break;
            }
        }
    })
    .await;
}
