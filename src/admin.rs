//! The admin HTTP server: `GET /metrics`, `GET /healthz` (liveness) and `GET /readyz`
//! (readiness).
//!
//! The Kafka loop is synchronous on its own thread, so the server brings its own small tokio
//! runtime on a dedicated thread ([`spawn_admin`]) instead of relying on an outer one; a blocked
//! poll loop therefore cannot stop health checks from being answered, which is exactly when they
//! matter.
//!
//! What the probes answer is decided in [`health`]: liveness = every thread the worker needs is
//! turning, readiness = the worker is making progress now.

use std::future::Future;
use std::io;
use std::net::SocketAddr;
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::Duration;

use std::collections::VecDeque;

use axum::Router;
use axum::extract::{Request, State};
use axum::http::{StatusCode, header};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use hyper::server::conn::http1;
use hyper_util::rt::{TokioIo, TokioTimer};
use hyper_util::service::TowerToHyperService;
use tokio::net::{TcpListener, TcpSocket};
use tokio::sync::{oneshot, watch};
use tokio::task::JoinSet;

use crate::metrics::Metrics;
use crate::repeated::Repeated;
use crate::settings::AdminSettings;

pub mod health;
pub use health::{Backlog, DEFAULT_STALL_AFTER, Health, Heartbeat, POLL_LOOP, WorkerState};

/// The content type Prometheus expects for the text exposition format.
pub const METRICS_CONTENT_TYPE: &str = "text/plain; version=0.0.4; charset=utf-8";

/// How long shutdown waits for in-flight admin requests before dropping them; a scraper holding
/// a connection open must not hold up the worker's exit.
const SHUTDOWN_GRACE: Duration = Duration::from_secs(5);

/// Connections the kernel queues before the accept loop takes them.
const ACCEPT_BACKLOG: u32 = 1024;

/// After a failed accept (out of file descriptors), wait this long before the next.
const ACCEPT_RETRY: Duration = Duration::from_millis(50);

/// At most one warning about failing accepts per this long, with the count of the others.
const ACCEPT_FAILURE_SUMMARY: Duration = Duration::from_secs(10);

#[derive(Clone)]
struct AdminState {
    metrics: Arc<Metrics>,
    health: Arc<Health>,
}

fn router(metrics: Arc<Metrics>, health: Arc<Health>) -> Router {
    Router::new()
        .route("/metrics", get(metrics_handler))
        .route("/healthz", get(healthz_handler))
        .route("/readyz", get(readyz_handler))
        .with_state(AdminState { metrics, health })
}

async fn metrics_handler(State(state): State<AdminState>) -> Response {
    // The state is worked out at the scrape, like the probes, so it is never older than that.
    state.metrics.set_worker_state(state.health.state());
    match state.metrics.render() {
        Ok(body) => ([(header::CONTENT_TYPE, METRICS_CONTENT_TYPE)], body).into_response(),
        Err(e) => {
            tracing::warn!(error = %e, "rendering metrics failed");
            (
                StatusCode::INTERNAL_SERVER_ERROR,
                format!("rendering metrics failed: {e}\n"),
            )
                .into_response()
        }
    }
}

async fn healthz_handler(State(state): State<AdminState>) -> Response {
    probe_response(state.health.is_alive(), "ok")
}

async fn readyz_handler(State(state): State<AdminState>) -> Response {
    probe_response(state.health.is_ready(), "ready")
}

fn probe_response(result: Result<(), String>, ok_body: &'static str) -> Response {
    match result {
        Ok(()) => (StatusCode::OK, format!("{ok_body}\n")).into_response(),
        Err(reason) => (StatusCode::SERVICE_UNAVAILABLE, format!("{reason}\n")).into_response(),
    }
}

/// What the admin port tolerates from a client; see `AdminSettings` for the reasons.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct AdminLimits {
    pub header_timeout: Duration,
    pub max_connections: usize,
    pub max_header_bytes: usize,
}

impl Default for AdminLimits {
    fn default() -> Self {
        AdminLimits::from(&AdminSettings::default())
    }
}

impl From<&AdminSettings> for AdminLimits {
    fn from(settings: &AdminSettings) -> Self {
        AdminLimits {
            header_timeout: Duration::from_secs(settings.header_timeout_secs),
            max_connections: settings.max_connections.max(1),
            max_header_bytes: settings.max_header_bytes,
        }
    }
}

/// No endpoint reads a body; one announced is refused before it is read, and hyper closes the
/// connection rather than drain it.
async fn refuse_bodies(request: Request, next: Next) -> Response {
    let headers = request.headers();
    let announced = headers.contains_key(header::TRANSFER_ENCODING)
        || headers
            .get(header::CONTENT_LENGTH)
            .is_some_and(|length| length.as_bytes() != b"0");
    if announced {
        return (
            StatusCode::PAYLOAD_TOO_LARGE,
            "the admin endpoints take no request body\n",
        )
            .into_response();
    }
    next.run(request).await
}

/// Serves the admin endpoints on `listener` until `shutdown` completes, then lets open requests
/// finish. For callers that already have a runtime; the worker uses [`spawn_admin`].
///
/// The accept loop is our own rather than `axum::serve`, which has no header timeout and no
/// connection cap: every connection gets hyper's header-read timeout (which also closes idle
/// kept-alive connections), and past `max_connections` the oldest connection is closed to make
/// room. Evicting rather than refusing keeps the port answering probes while idle sockets pile
/// up; a probe's connection lives milliseconds, so it is never the oldest.
pub async fn serve(
    listener: TcpListener,
    metrics: Arc<Metrics>,
    health: Arc<Health>,
    limits: AdminLimits,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> io::Result<()> {
    let app = router(metrics, health).layer(middleware::from_fn(refuse_bodies));
    let mut http = http1::Builder::new();
    http.timer(TokioTimer::new())
        .header_read_timeout(limits.header_timeout)
        .max_header_size(limits.max_header_bytes);
    let (closing_tx, closing) = watch::channel(false);
    let mut connections = JoinSet::new();
    // Oldest first; a sender whose connection ended is closed and skipped.
    let mut evict: VecDeque<oneshot::Sender<()>> = VecDeque::new();
    let mut accept_failures = Repeated::new(ACCEPT_FAILURE_SUMMARY);
    tokio::pin!(shutdown);
    loop {
        let stream = tokio::select! {
            () = &mut shutdown => break,
            Some(_) = connections.join_next(), if !connections.is_empty() => continue,
            accepted = listener.accept() => match accepted {
                Ok((stream, _)) => stream,
                Err(e) => {
                    // Out of file descriptors, mostly: let connections end before retrying.
                    if let Some(suppressed) = accept_failures.occurred() {
                        tracing::warn!(error = %e, suppressed, "admin port cannot accept a connection");
                    }
                    tokio::time::sleep(ACCEPT_RETRY).await;
                    continue;
                }
            },
        };
        while connections.len() >= limits.max_connections {
            match evict.pop_front() {
                Some(oldest) if !oldest.is_closed() => {
                    let _ = oldest.send(());
                    break;
                }
                Some(_) => {}
                None => break,
            }
        }
        if evict.len() > limits.max_connections.saturating_mul(2) {
            evict.retain(|sender| !sender.is_closed());
        }
        let (evict_tx, evicted) = oneshot::channel();
        evict.push_back(evict_tx);
        let service = TowerToHyperService::new(app.clone());
        let connection = http.serve_connection(TokioIo::new(stream), service);
        let mut closing = closing.clone();
        connections.spawn(async move {
            tokio::pin!(connection);
            let closing = async move {
                let _ = closing.wait_for(|closing| *closing).await;
            };
            tokio::select! {
                _ = connection.as_mut() => {}
                // Dropping the connection closes the socket.
                _ = evicted => {}
                () = closing => {
                    connection.as_mut().graceful_shutdown();
                    let _ = connection.await;
                }
            }
        });
    }
    drop(listener);
    let _ = closing_tx.send(true);
    while connections.join_next().await.is_some() {}
    Ok(())
}

/// A running admin server on its own thread. Dropping it also stops the server and joins the
/// thread; [`AdminHandle::shutdown`] does the same but reports how the server ended.
pub struct AdminHandle {
    local_addr: SocketAddr,
    stop: Option<watch::Sender<bool>>,
    thread: Option<JoinHandle<io::Result<()>>>,
}

impl AdminHandle {
    /// The bound address; differs from the requested one when port 0 was asked for.
    pub fn local_addr(&self) -> SocketAddr {
        self.local_addr
    }

    /// Whether the server thread has ended (it should not, before [`AdminHandle::shutdown`]).
    pub fn is_finished(&self) -> bool {
        self.thread.as_ref().is_none_or(JoinHandle::is_finished)
    }

    /// Stops accepting, gives in-flight requests a short grace, and joins the thread.
    pub fn shutdown(mut self) -> io::Result<()> {
        self.stop_and_join()
    }

    fn stop_and_join(&mut self) -> io::Result<()> {
        if let Some(stop) = self.stop.take() {
            // The receiver is gone only if the server already ended; joining reports why.
            let _ = stop.send(true);
        }
        match self.thread.take() {
            Some(thread) => thread
                .join()
                .map_err(|_| io::Error::other("admin server thread panicked"))?,
            None => Ok(()),
        }
    }
}

impl Drop for AdminHandle {
    fn drop(&mut self) {
        if let Err(e) = self.stop_and_join() {
            tracing::warn!(error = %e, "admin server ended with an error");
        }
    }
}

/// Binds `addr` and serves the admin endpoints from a thread named "admin" with its own
/// single-threaded runtime.
///
/// Binding happens before returning so that a taken port fails startup with a clear error rather
/// than leaving a worker without health checks.
pub fn spawn_admin(
    addr: SocketAddr,
    metrics: Arc<Metrics>,
    health: Arc<Health>,
    limits: AdminLimits,
) -> io::Result<AdminHandle> {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_io()
        .enable_time()
        .build()?;
    let listener = {
        // Registering the socket needs the runtime's reactor, which is only reachable from
        // inside it.
        let _guard = runtime.enter();
        listen(addr).map_err(|e| {
            io::Error::new(
                e.kind(),
                format!("admin server cannot listen on {addr}: {e}"),
            )
        })?
    };
    let local_addr = listener.local_addr()?;

    let (stop_tx, stop_rx) = watch::channel(false);
    let thread = std::thread::Builder::new()
        .name("admin".to_owned())
        .spawn(move || runtime.block_on(run(listener, metrics, health, limits, stop_rx)))?;

    Ok(AdminHandle {
        local_addr,
        stop: Some(stop_tx),
        thread: Some(thread),
    })
}

/// A listener whose accept queue holds a burst of connections beyond the connection cap: the
/// standard library's 128 lets a burst of idle sockets get probes refused by the kernel before
/// the accept loop can evict anything.
fn listen(addr: SocketAddr) -> io::Result<TcpListener> {
    let socket = if addr.is_ipv4() {
        TcpSocket::new_v4()?
    } else {
        TcpSocket::new_v6()?
    };
    // As the standard library does: a restarted worker can bind while old connections linger.
    socket.set_reuseaddr(true)?;
    socket.bind(addr)?;
    socket.listen(ACCEPT_BACKLOG)
}

async fn run(
    listener: TcpListener,
    metrics: Arc<Metrics>,
    health: Arc<Health>,
    limits: AdminLimits,
    mut stop: watch::Receiver<bool>,
) -> io::Result<()> {
    let mut signal = stop.clone();
    // An error means the handle is gone, which is also a reason to stop.
    let server = serve(listener, metrics, health, limits, async move {
        let _ = signal.wait_for(|stop| *stop).await;
    });
    tokio::pin!(server);
    tokio::select! {
        result = &mut server => result,
        _ = stop.wait_for(|stop| *stop) => {
            match tokio::time::timeout(SHUTDOWN_GRACE, server).await {
                Ok(result) => result,
                Err(_) => {
                    // Returning drops the runtime, which cancels the remaining connections.
                    tracing::warn!("admin connections still open after the shutdown grace; dropping them");
                    Ok(())
                }
            }
        }
    }
}

#[cfg(test)]
#[path = "admin/server_tests.rs"]
mod tests;
