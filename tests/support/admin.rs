//! A subprocess worker's admin port: its address from the log, and its metrics.

use std::io::{Read, Write};
use std::net::TcpStream;
use std::time::Duration;

use super::{ChildWorker, wait_until};

/// The worker's admin address, from the line it logs at start.
pub fn admin_address(worker: &ChildWorker) -> String {
    let mut address = None;
    assert!(
        wait_until(Duration::from_secs(20), || {
            let log = strip_ansi(&std::fs::read_to_string(&worker.log).unwrap_or_default());
            address = log
                .lines()
                .find(|line| line.contains("admin endpoints"))
                .and_then(|line| line.split("addr=").nth(1))
                .and_then(|rest| rest.split_whitespace().next())
                .map(str::to_string);
            address.is_some()
        }),
        "the worker never logged its admin address:\n{}",
        worker.log_tail()
    );
    address.unwrap_or_default()
}

/// The log without terminal colour sequences (`ESC [ … m`).
pub fn strip_ansi(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    let mut chars = text.chars();
    while let Some(c) = chars.next() {
        if c == '\u{1b}' {
            for c in chars.by_ref() {
                if c == 'm' {
                    break;
                }
            }
        } else {
            out.push(c);
        }
    }
    out
}

/// The body of `GET /metrics`.
pub fn scrape(address: &str) -> String {
    get(address, "/metrics").1
}

pub fn metric_value(address: &str, name: &str) -> f64 {
    super::metric(&scrape(address), name).unwrap_or(f64::NAN)
}

/// `GET path` on the admin port: the status code and the body.
pub fn get(address: &str, path: &str) -> (u16, String) {
    try_get(address, path).expect("connect to the admin port")
}

/// As [`get`], or the error once the port is closed or closing (the worker exits): refused,
/// reset, or closed before a status line.
pub fn try_get(address: &str, path: &str) -> std::io::Result<(u16, String)> {
    let mut stream = TcpStream::connect(address)?;
    stream.set_read_timeout(Some(Duration::from_secs(10)))?;
    stream.write_all(format!("GET {path} HTTP/1.0\r\nHost: {address}\r\n\r\n").as_bytes())?;
    let mut response = String::new();
    stream.read_to_string(&mut response)?;
    let status = response
        .split(' ')
        .nth(1)
        .and_then(|code| code.parse().ok())
        .ok_or_else(|| {
            std::io::Error::new(
                std::io::ErrorKind::UnexpectedEof,
                format!("no status line in {response:?}"),
            )
        })?;
    let body = response
        .split_once("\r\n\r\n")
        .map(|(_, body)| body.to_string())
        .unwrap_or_default();
    Ok((status, body))
}

/// Polls `GET path` until `accept(status, body)` holds or `timeout` passes; returns the last
/// answer and whether it was accepted.
pub fn wait_for(
    address: &str,
    path: &str,
    timeout: Duration,
    accept: impl Fn(u16, &str) -> bool,
) -> (bool, u16, String) {
    let mut last = (0, String::new());
    let held = wait_until(timeout, || {
        last = get(address, path);
        accept(last.0, &last.1)
    });
    (held, last.0, last.1)
}

/// Where a worker stands, for a failure message: its probes' answers and the metrics that say
/// whether it reads, commits and holds partitions (or that its port is gone).
pub fn diagnostics(address: &str) -> String {
    let probe = |path: &str| match try_get(address, path) {
        Ok((status, body)) => format!("{path} {status} {}", body.trim_end()),
        Err(e) => format!("{path}: {e}"),
    };
    let metrics: Vec<String> = try_get(address, "/metrics")
        .map(|(_, text)| text)
        .unwrap_or_default()
        .lines()
        .filter(|line| {
            [
                "promo_worker_state{",
                "promo_transactions_total",
                "promo_consumer_lag_records",
                "promo_assigned_partitions",
                "promo_orders_consumed_total",
                "promo_conversions_total",
            ]
            .iter()
            .any(|name| line.starts_with(name))
                && !line.ends_with(" 0")
        })
        .map(str::to_owned)
        .collect();
    format!(
        "{}\n{}\nmetrics (non-zero): {}",
        probe("/healthz"),
        probe("/readyz"),
        metrics.join(" | ")
    )
}
