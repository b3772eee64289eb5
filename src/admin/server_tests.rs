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
        AdminLimits::default(),
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
        AdminLimits::default(),
    ) {
        Ok(_) => panic!("bound a taken port"),
        Err(e) => e,
    };
    assert_eq!(err.kind(), io::ErrorKind::AddrInUse);
    assert!(err.to_string().contains(&addr.to_string()), "{err}");
}

fn start_with(limits: AdminLimits) -> AdminHandle {
    spawn_admin(
        "127.0.0.1:0".parse().expect("addr"),
        Arc::new(Metrics::new().expect("metrics")),
        Arc::new(Health::new()),
        limits,
    )
    .expect("spawn admin")
}

fn strict() -> AdminLimits {
    AdminLimits {
        header_timeout: Duration::from_secs(1),
        max_connections: 8,
        max_header_bytes: 1024,
    }
}

/// Whether the server closed `stream` (end of file or reset) within `within`.
fn closed_within(stream: &mut TcpStream, within: Duration) -> bool {
    stream.set_read_timeout(Some(within)).expect("read timeout");
    let mut buf = [0u8; 1024];
    loop {
        match stream.read(&mut buf) {
            Ok(0) => return true,
            // A response (408) before the close is fine.
            Ok(_) => continue,
            Err(e)
                if matches!(
                    e.kind(),
                    io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut
                ) =>
            {
                return false;
            }
            Err(_) => return true,
        }
    }
}

#[test]
fn a_header_sent_slowly_is_cut_off_by_the_header_timeout() {
    let admin = start_with(strict());
    let mut slow = TcpStream::connect(admin.local_addr()).expect("connect");
    slow.write_all(b"GET /healthz HTTP/1.1\r\n")
        .expect("request line");
    let started = Instant::now();
    let mut cut = false;
    // One header line every 300 ms: each arrives well within any per-read timeout, so only
    // a deadline on the whole header stops it.
    for i in 0..40 {
        if slow
            .write_all(format!("X-Slow-{i}: 1\r\n").as_bytes())
            .is_err()
        {
            cut = true;
            break;
        }
        if closed_within(&mut slow, Duration::from_millis(300)) {
            cut = true;
            break;
        }
    }
    assert!(cut, "still open after {:?}", started.elapsed());
    assert!(
        started.elapsed() >= Duration::from_millis(900),
        "{:?}",
        started.elapsed()
    );
    admin.shutdown().expect("clean shutdown");
}

#[test]
fn idle_connections_are_closed_first_and_after_a_request() {
    let admin = start_with(strict());
    let addr = admin.local_addr();
    let mut idle = TcpStream::connect(addr).expect("connect");
    assert!(closed_within(&mut idle, Duration::from_secs(10)));

    let mut kept = TcpStream::connect(addr).expect("connect");
    kept.write_all(b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n")
        .expect("request");
    let mut response = [0u8; 512];
    let n = kept.read(&mut response).expect("response");
    assert!(
        response[..n].starts_with(b"HTTP/1.1 200"),
        "{:?}",
        String::from_utf8_lossy(&response[..n])
    );
    // Kept alive after the answer, then closed for idling.
    assert!(closed_within(&mut kept, Duration::from_secs(10)));
    admin.shutdown().expect("clean shutdown");
}

#[test]
fn past_the_connection_cap_the_oldest_goes_and_probes_still_answer() {
    let admin = start_with(AdminLimits {
        header_timeout: Duration::from_secs(600),
        ..strict()
    });
    let addr = admin.local_addr();
    let mut idle: Vec<TcpStream> = (0..20)
        .map(|_| TcpStream::connect(addr).expect("connect"))
        .collect();
    for _ in 0..3 {
        assert_eq!(get(addr, "/healthz").status, 200);
    }
    let (mut closed, mut open) = (0, 0);
    for stream in &mut idle {
        if closed_within(stream, Duration::from_millis(200)) {
            closed += 1;
        } else {
            open += 1;
        }
    }
    // The newest seven idle sockets may stay (the eighth slot went to the last probe).
    assert!(open <= 8, "{open} idle connections open, {closed} closed");
    assert!(
        closed >= 12,
        "{open} idle connections open, {closed} closed"
    );
    admin.shutdown().expect("clean shutdown");
}

#[test]
fn oversized_headers_and_request_bodies_are_refused() {
    let admin = start_with(strict());
    let addr = admin.local_addr();
    let reply = |request: String| {
        let mut stream = TcpStream::connect(addr).expect("connect");
        stream
            .set_read_timeout(Some(Duration::from_secs(10)))
            .expect("read timeout");
        // The server may answer and close before reading all of an oversized request.
        let _ = stream.write_all(request.as_bytes());
        let mut raw = String::new();
        let _ = stream.read_to_string(&mut raw);
        raw
    };
    let big = "a".repeat(2048);
    let raw = reply(format!(
        "GET /healthz HTTP/1.1\r\nHost: x\r\nX-Big: {big}\r\n\r\n"
    ));
    assert!(raw.starts_with("HTTP/1.1 431"), "{raw}");
    let raw = reply(
        "POST /healthz HTTP/1.1\r\nHost: x\r\nContent-Length: 5\r\nConnection: close\r\n\r\nhello"
            .to_owned(),
    );
    assert!(raw.starts_with("HTTP/1.1 413"), "{raw}");
    let raw = reply(
        "GET /healthz HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\nConnection: close\r\n\r\n0\r\n\r\n"
            .to_owned(),
    );
    assert!(raw.starts_with("HTTP/1.1 413"), "{raw}");
    assert_eq!(get(addr, "/healthz").status, 200);
    admin.shutdown().expect("clean shutdown");
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
            AdminLimits::default(),
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
