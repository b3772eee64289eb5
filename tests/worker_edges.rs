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

mod support;

use std::io::{Read, Write};
use std::net::TcpStream;
use std::time::{Duration, Instant};

use support::admin::{admin_address, get};
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

fn open_fds(pid: u32) -> usize {
    std::fs::read_dir(format!("/proc/{pid}/fd"))
        .map(|d| d.count())
        .expect("proc fd")
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
    let fds_before = open_fds(pid);

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
        wait_until(DEADLINE, || open_fds(pid) <= fds_before + 5),
        "descriptors: {fds_before} before, {} after",
        open_fds(pid)
    );
    eprintln!(
        "300 slow/idle connections: closed after {took:?}, slowest /healthz {slowest:?}, RSS {rss_before} -> {rss_after} KiB"
    );

    // Past the cap: 1,000 idle connections at once; the oldest are closed to make room, the
    // probes still answer, descriptors stay under the cap.
    let flood: Vec<TcpStream> = (0..1000)
        .map(|_| TcpStream::connect(&address).expect("connect"))
        .collect();
    healthz_within(&address, Duration::from_secs(3));
    let fds = open_fds(pid);
    assert!(
        fds <= fds_before + 400 + 5,
        "{fds} descriptors with the cap at 400 ({fds_before} before)"
    );
    let rss_flood = rss_kib(pid);
    assert!(
        rss_flood < rss_before + 32 * 1024,
        "RSS grew from {rss_before} KiB to {rss_flood} KiB under the flood"
    );
    drop(flood);
    healthz_within(&address, Duration::from_secs(3));
}
