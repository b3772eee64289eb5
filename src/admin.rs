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

use axum::Router;
use axum::extract::State;
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use tokio::net::TcpListener;
use tokio::sync::watch;

use crate::metrics::Metrics;

pub mod health;
pub use health::{Backlog, DEFAULT_STALL_AFTER, Health, Heartbeat, POLL_LOOP, WorkerState};

/// The content type Prometheus expects for the text exposition format.
pub const METRICS_CONTENT_TYPE: &str = "text/plain; version=0.0.4; charset=utf-8";

/// How long shutdown waits for in-flight admin requests before dropping them; a scraper holding
/// a connection open must not hold up the worker's exit.
const SHUTDOWN_GRACE: Duration = Duration::from_secs(5);

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

/// Serves the admin endpoints on `listener` until `shutdown` completes, then waits for in-flight
/// requests. For callers that already have a runtime; the worker uses [`spawn_admin`].
pub async fn serve(
    listener: TcpListener,
    metrics: Arc<Metrics>,
    health: Arc<Health>,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> io::Result<()> {
    axum::serve(listener, router(metrics, health))
        .with_graceful_shutdown(shutdown)
        .await
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
) -> io::Result<AdminHandle> {
    let std_listener = std::net::TcpListener::bind(addr).map_err(|e| {
        io::Error::new(
            e.kind(),
            format!("admin server cannot listen on {addr}: {e}"),
        )
    })?;
    std_listener.set_nonblocking(true)?;
    let local_addr = std_listener.local_addr()?;

    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_io()
        .enable_time()
        .build()?;
    let listener = {
        // Registering the socket needs the runtime's reactor, which is only reachable from
        // inside it.
        let _guard = runtime.enter();
        TcpListener::from_std(std_listener)?
    };

    let (stop_tx, stop_rx) = watch::channel(false);
    let thread = std::thread::Builder::new()
        .name("admin".to_owned())
        .spawn(move || runtime.block_on(run(listener, metrics, health, stop_rx)))?;

    Ok(AdminHandle {
        local_addr,
        stop: Some(stop_tx),
        thread: Some(thread),
    })
}

async fn run(
    listener: TcpListener,
    metrics: Arc<Metrics>,
    health: Arc<Health>,
    mut stop: watch::Receiver<bool>,
) -> io::Result<()> {
    let mut signal = stop.clone();
    // An error means the handle is gone, which is also a reason to stop.
    let server = serve(listener, metrics, health, async move {
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
mod tests {
    use std::io::{Read, Write};
    use std::net::TcpStream;
    use std::time::Instant;

    use super::*;

    struct Reply {
        status: u16,
        head: String,
        body: String,
    }

    impl Reply {
        fn header(&self, name: &str) -> Option<&str> {
            self.head.lines().skip(1).find_map(|line| {
                let (n, v) = line.split_once(':')?;
                n.trim().eq_ignore_ascii_case(name).then(|| v.trim())
            })
        }
    }

    fn get(addr: SocketAddr, path: &str) -> Reply {
        let mut stream = TcpStream::connect(addr).expect("connect");
        stream
            .set_read_timeout(Some(Duration::from_secs(10)))
            .expect("read timeout");
        write!(
            stream,
            "GET {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n"
        )
        .expect("write request");
        let mut raw = String::new();
        stream.read_to_string(&mut raw).expect("read response");
        let (head, body) = raw.split_once("\r\n\r\n").expect("header end");
        let status = head
            .split(' ')
            .nth(1)
            .and_then(|s| s.parse().ok())
            .expect("status code");
        Reply {
            status,
            head: head.to_owned(),
            body: body.to_owned(),
        }
    }

    /// Polls `check` until it holds; the deadline only bounds a failing test.
    fn wait_until(what: &str, mut check: impl FnMut() -> bool) {
        let deadline = Instant::now() + Duration::from_secs(10);
        while !check() {
            assert!(Instant::now() < deadline, "timed out waiting for {what}");
            std::thread::sleep(Duration::from_millis(5));
        }
    }

    fn start() -> (AdminHandle, Arc<Metrics>, Arc<Health>) {
        let metrics = Arc::new(Metrics::new().expect("metrics"));
        let health = Arc::new(Health::new());
        let handle = spawn_admin(
            "127.0.0.1:0".parse().expect("addr"),
            Arc::clone(&metrics),
            Arc::clone(&health),
        )
        .expect("spawn admin");
        (handle, metrics, health)
    }

    #[test]
    fn readiness_needs_assignment_table_and_a_turning_loop() {
        let (admin, _metrics, health) = start();
        let addr = admin.local_addr();

        let r = get(addr, "/readyz");
        assert_eq!(r.status, 503);
        assert!(r.body.contains("no partitions assigned"), "{}", r.body);
        assert!(r.body.contains("code table not loaded"), "{}", r.body);
        assert!(r.body.contains("poll loop not started"), "{}", r.body);

        health.set_assigned_partitions(3);
        let poll_loop = health.register(POLL_LOOP);
        poll_loop.beat();
        let r = get(addr, "/readyz");
        assert_eq!(r.status, 503);
        assert!(!r.body.contains("no partitions assigned"), "{}", r.body);
        assert!(r.body.contains("code table not loaded"), "{}", r.body);

        health.set_table_loaded(true);
        let r = get(addr, "/readyz");
        assert_eq!(r.status, 200, "{}", r.body);
        assert_eq!(r.body, "ready\n");

        health.set_assigned(false);
        let r = get(addr, "/readyz");
        assert_eq!(r.status, 503);
        assert!(r.body.contains("no partitions assigned"), "{}", r.body);

        admin.shutdown().expect("clean shutdown");
    }

    #[test]
    fn healthz_is_ok_during_startup_grace() {
        let (admin, _metrics, _health) = start();
        let r = get(admin.local_addr(), "/healthz");
        assert_eq!(r.status, 200, "{}", r.body);
        assert_eq!(r.body, "ok\n");
        admin.shutdown().expect("clean shutdown");
    }

    #[test]
    fn metrics_endpoint_renders_with_content_type() {
        let (admin, metrics, _health) = start();
        metrics.inc_orders_consumed(5);
        let r = get(admin.local_addr(), "/metrics");
        assert_eq!(r.status, 200);
        assert_eq!(r.header("content-type"), Some(METRICS_CONTENT_TYPE));
        assert!(
            r.body.contains("promo_orders_consumed_total 5"),
            "{}",
            r.body
        );
        assert_eq!(get(admin.local_addr(), "/nope").status, 404);
        admin.shutdown().expect("clean shutdown");
    }

    #[test]
    fn stalled_poll_loop_fails_readiness_then_liveness_and_recovers() {
        let (admin, _metrics, health) = start();
        let addr = admin.local_addr();
        health.set_assigned_partitions(1);
        health.set_table_loaded(true);
        let poll_loop = health.register(POLL_LOOP);
        poll_loop.beat();
        assert_eq!(get(addr, "/readyz").status, 200);

        health.set_stall_after(Duration::from_millis(20));
        wait_until("readyz to report the stall", || {
            get(addr, "/readyz").status == 503
        });
        let r = get(addr, "/readyz");
        assert!(r.body.contains("poll loop not turning"), "{}", r.body);
        wait_until("healthz to report the hang", || {
            get(addr, "/healthz").status == 503
        });
        let r = get(addr, "/healthz");
        assert!(
            r.body.contains("poll loop thread not turning"),
            "{}",
            r.body
        );

        health.set_stall_after(Duration::from_secs(60));
        poll_loop.beat();
        assert_eq!(get(addr, "/readyz").status, 200);
        assert_eq!(get(addr, "/healthz").status, 200);

        admin.shutdown().expect("clean shutdown");
    }

    #[test]
    fn metrics_export_the_worker_state_one_hot() {
        let (admin, _metrics, health) = start();
        let addr = admin.local_addr();
        let r = get(addr, "/metrics");
        for state in WorkerState::ALL {
            let value = if state == WorkerState::Starting { 1 } else { 0 };
            let line = format!("promo_worker_state{{state=\"{}\"}} {value}", state.as_str());
            assert!(r.body.lines().any(|l| l == line), "{line} in:\n{}", r.body);
        }
        health.set_assigned_partitions(1);
        health.set_table_loaded(true);
        let poll_loop = health.register(POLL_LOOP);
        poll_loop.beat();
        health.pass(true);
        let r = get(addr, "/metrics");
        assert!(
            r.body
                .lines()
                .any(|l| l == r#"promo_worker_state{state="idle"} 1"#),
            "{}",
            r.body
        );
        assert!(
            r.body
                .lines()
                .any(|l| l == r#"promo_worker_state{state="starting"} 0"#),
            "{}",
            r.body
        );
        admin.shutdown().expect("clean shutdown");
    }

    #[test]
    fn shutdown_closes_the_listener_and_joins() {
        let (admin, _metrics, _health) = start();
        let addr = admin.local_addr();
        assert_eq!(get(addr, "/healthz").status, 200);
        admin.shutdown().expect("clean shutdown");
        assert!(TcpStream::connect(addr).is_err(), "still accepting");
    }

    #[test]
    fn shutdown_is_not_held_up_by_an_idle_connection() {
        let (admin, _metrics, _health) = start();
        let addr = admin.local_addr();
        let idle = TcpStream::connect(addr).expect("connect");
        // Make sure the server has accepted the connection before shutting down.
        assert_eq!(get(addr, "/healthz").status, 200);
        let started = Instant::now();
        admin.shutdown().expect("clean shutdown");
        assert!(started.elapsed() < SHUTDOWN_GRACE + Duration::from_secs(5));
        drop(idle);
    }

    #[test]
    fn dropping_the_handle_stops_the_server() {
        let (admin, _metrics, _health) = start();
        let addr = admin.local_addr();
        drop(admin);
        assert!(TcpStream::connect(addr).is_err(), "still accepting");
    }

    #[test]
    fn port_in_use_is_a_clear_error() {
        let taken = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
        let addr = taken.local_addr().expect("addr");
        let err = match spawn_admin(
            addr,
            Arc::new(Metrics::new().expect("metrics")),
            Arc::new(Health::new()),
        ) {
            Ok(_) => panic!("bound a taken port"),
            Err(e) => e,
        };
        assert_eq!(err.kind(), io::ErrorKind::AddrInUse);
        assert!(err.to_string().contains(&addr.to_string()), "{err}");
    }

    #[test]
    fn serve_runs_on_an_outer_runtime_too() {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .expect("runtime");
        rt.block_on(async {
            let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
            let addr = listener.local_addr().expect("addr");
            let health = Arc::new(Health::new());
            health.set_assigned_partitions(1);
            health.set_table_loaded(true);
            let poll_loop = health.register(POLL_LOOP);
            poll_loop.beat();
            let (tx, rx) = tokio::sync::oneshot::channel::<()>();
            let server = tokio::spawn(serve(
                listener,
                Arc::new(Metrics::new().expect("metrics")),
                health,
                async move {
                    let _ = rx.await;
                },
            ));
            let status = tokio::task::spawn_blocking(move || get(addr, "/readyz").status)
                .await
                .expect("client");
            assert_eq!(status, 200);
            tx.send(()).expect("signal");
            server.await.expect("join").expect("serve");
        });
    }
}
