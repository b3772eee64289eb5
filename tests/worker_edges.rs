//! A worker at the edges of its environment, as a subprocess with its admin port:
//!
//! - hostile clients on the admin port (issue 13, item 2): hundreds of slow and idle connections
//!   neither stop `/healthz` from answering nor grow the worker's memory, and the header timeout
//!   closes them;
//! - an unreachable broker (issue 16, item 3; issue 13, item 6): the log says so, a few lines
//!   rather than dozens a second; `/readyz` and `promo_worker_state` name it; SIGTERM exits at
//!   once since nothing is in flight.
//!
//! The broker is `127.0.0.1:1`, where nothing listens: none of this needs the test broker.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod support;

use std::io::{Read, Write};
use std::net::TcpStream;
use std::time::{Duration, Instant};

use support::admin::{admin_address, get, metric_value, strip_ansi, wait_for};
use support::{ChildWorker, Names, wait_until};

const NOWHERE: &str = "127.0.0.1:1";
/// Only bounds a failing test.
const DEADLINE: Duration = Duration::from_secs(60);

fn worker(test: &str, sets: &[&str]) -> (ChildWorker, String, tempfile::TempDir) {
    let names = Names::new(test);
    let dir = tempfile::tempdir().expect("temp dir");
    let worker = ChildWorker::spawn_on(
        NOWHERE,
        &names,
        &names.transactional_id,
        sets,
        &dir.path().join("w.log"),
    );
    let address = admin_address(&worker);
    (worker, address, dir)
}

/// From /proc: resident memory (KiB) and open file descriptors of `pid`.
fn rss_kib(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).expect("proc status");
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.split_whitespace().next())
        .and_then(|v| v.parse().ok())
        .expect("VmRSS")
}

/// Established connections accepted on the admin port, from /proc/net/tcp: the server's side
/// (local port = the admin port). Counting the worker's descriptors instead would also count
/// librdkafka's connection attempts, which come and go.
fn admin_connections(address: &str) -> usize {
    let port: u16 = address
        .rsplit(':')
        .next()
        .and_then(|p| p.parse().ok())
        .expect("admin port");
    let local = format!(":{port:04X}");
    ["/proc/net/tcp", "/proc/net/tcp6"]
        .iter()
        .filter_map(|table| std::fs::read_to_string(table).ok())
        .map(|text| {
            text.lines()
                .skip(1)
                .filter(|line| {
                    let fields: Vec<&str> = line.split_whitespace().collect();
                    // local_address, rem_address, st (01: established)
                    fields.len() > 3 && fields[1].ends_with(&local) && fields[3] == "01"
                })
                .count()
        })
        .sum()
}

/// Whether the server has closed `stream` (end of file or reset), without waiting.
fn closed(stream: &mut TcpStream) -> bool {
    stream.set_nonblocking(true).expect("nonblocking");
    let mut buf = [0u8; 256];
    loop {
        match stream.read(&mut buf) {
            Ok(0) => return true,
            Ok(_) => continue,
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => return false,
            Err(_) => return true,
        }
    }
}

/// `GET /healthz` answered 200 within `within`.
fn healthz_within(address: &str, within: Duration) -> Duration {
    let started = Instant::now();
    let (status, body) = get(address, "/healthz");
    let took = started.elapsed();
    assert_eq!(status, 200, "{body}");
    assert!(took < within, "/healthz took {took:?}");
    took
}

#[test]
fn slow_and_idle_admin_connections_are_closed_and_cost_nothing_lasting() {
    let (worker, address, _dir) = worker(
        "admin-slow",
        &["admin.header_timeout_secs=4", "admin.max_connections=400"],
    );
    let pid = worker.pid();
    for _ in 0..5 {
        healthz_within(&address, Duration::from_secs(5));
    }
    let rss_before = rss_kib(pid);

    // 150 slow clients (a request line, then a header line every second) and 150 that connect
    // and send nothing.
    let mut slow: Vec<TcpStream> = (0..150)
        .map(|_| {
            let mut s = TcpStream::connect(&address).expect("connect");
            s.write_all(b"GET /healthz HTTP/1.1\r\n")
                .expect("request line");
            s
        })
        .collect();
    let mut idle: Vec<TcpStream> = (0..150)
        .map(|_| TcpStream::connect(&address).expect("connect"))
        .collect();
    let opened = Instant::now();
    let mut slowest = Duration::ZERO;
    let mut line = 0;
    let all_closed = wait_until(DEADLINE, || {
        slowest = slowest.max(healthz_within(&address, Duration::from_secs(3)));
        for s in &mut slow {
            // A failed write means the server already closed it.
            let _ = s.write_all(format!("X-Slow-{line}: 1\r\n").as_bytes());
        }
        line += 1;
        std::thread::sleep(Duration::from_millis(500));
        slow.iter_mut().chain(idle.iter_mut()).all(closed)
    });
    let took = opened.elapsed();
    assert!(all_closed, "slow connections still open after {took:?}");
    assert!(
        took >= Duration::from_secs(3),
        "closed after {took:?}: before the 4 s header timeout, so by something else"
    );
    let rss_after = rss_kib(pid);
    assert!(
        rss_after < rss_before + 16 * 1024,
        "RSS grew from {rss_before} KiB to {rss_after} KiB"
    );
    assert!(
        wait_until(DEADLINE, || admin_connections(&address) == 0),
        "{} connections still accepted",
        admin_connections(&address)
    );
    eprintln!(
        "300 slow/idle connections: closed after {took:?}, slowest /healthz {slowest:?}, RSS {rss_before} -> {rss_after} KiB"
    );

    // Past the cap: 1,000 idle connections at once; the oldest are closed to make room, the
    // probes still answer, accepted connections stay under the cap.
    let flood: Vec<TcpStream> = (0..1000)
        .map(|_| TcpStream::connect(&address).expect("connect"))
        .collect();
    healthz_within(&address, Duration::from_secs(3));
    let accepted = admin_connections(&address);
    assert!(
        accepted <= 400 + 1,
        "{accepted} accepted connections with the cap at 400"
    );
    let rss_flood = rss_kib(pid);
    assert!(
        rss_flood < rss_before + 32 * 1024,
        "RSS grew from {rss_before} KiB to {rss_flood} KiB under the flood"
    );
    drop(flood);
    healthz_within(&address, Duration::from_secs(3));
}

/// Warning and error lines of the log, and those among them saying no broker is reachable.
fn warnings(worker: &ChildWorker) -> (Vec<String>, Vec<String>) {
    let log = strip_ansi(&std::fs::read_to_string(&worker.log).unwrap_or_default());
    let loud: Vec<String> = log
        .lines()
        .filter(|l| l.contains(" WARN ") || l.contains(" ERROR "))
        .map(str::to_owned)
        .collect();
    let no_broker = loud
        .iter()
        .filter(|l| l.contains("no Kafka broker reachable"))
        .cloned()
        .collect();
    (loud, no_broker)
}

#[test]
fn an_unreachable_broker_is_logged_sparingly_named_by_readiness_and_sigterm_exits_at_once() {
    let started = Instant::now();
    let (mut worker, address, _dir) = worker("no-broker", &["worker.repeated_warning_secs=2"]);

    let (held, status, body) = wait_for(&address, "/readyz", DEADLINE, |status, body| {
        status == 503 && body.contains("broker unreachable")
    });
    assert!(held, "readiness: {status} {body}\n{}", worker.log_tail());
    assert!(
        body.contains(NOWHERE),
        "the reason names the brokers: {body}"
    );
    assert_eq!(
        metric_value(
            &address,
            r#"promo_worker_state{state="broker_unreachable"}"#
        ),
        1.0
    );
    assert_eq!(
        get(&address, "/healthz").0,
        200,
        "waiting for a broker is alive"
    );

    // The first warning, then a summary carrying the repeats in between.
    let mut summary = None;
    assert!(
        wait_until(DEADLINE, || {
            summary = warnings(&worker).1.into_iter().find(|l| {
                l.split("repeats=")
                    .nth(1)
                    .and_then(|n| n.split_whitespace().next())
                    .and_then(|n| n.parse::<u64>().ok())
                    .is_some_and(|n| n > 0)
            });
            summary.is_some()
        }),
        "no summary line with a repeat count:\n{}",
        worker.log_tail()
    );
    let (loud, no_broker) = warnings(&worker);
    let elapsed = started.elapsed().as_secs() + 1;
    // One line per kind at most every 2 s (plus the first); a handful of kinds: librdkafka's
    // connection failure, its error event, and ours.
    let per_kind = (1 + elapsed / 2 + 1) as usize;
    assert!(
        no_broker.len() <= per_kind,
        "{} 'no broker' lines in {elapsed} s:\n{}",
        no_broker.len(),
        no_broker.join("\n")
    );
    assert!(
        loud.len() <= 4 * per_kind,
        "{} warning lines in {elapsed} s:\n{}",
        loud.len(),
        loud.join("\n")
    );
    eprintln!(
        "{} warning lines ({} about the broker) in {elapsed} s",
        loud.len(),
        no_broker.len()
    );

    // Nothing read, nothing in flight: SIGTERM exits well inside the 30 s drain deadline.
    let stopping = Instant::now();
    let exited = worker.terminate(Duration::from_secs(10));
    assert_eq!(
        exited.and_then(|s| s.code()),
        Some(0),
        "exit after SIGTERM ({:?}):\n{}",
        stopping.elapsed(),
        worker.log_tail()
    );
    eprintln!("SIGTERM to exit: {:?}", stopping.elapsed());
}
