//! `promo-attribution healthcheck`: one HTTP GET of the worker's admin port, for container
//! images without curl or wget. Exit 0 when the answer is 200, 1 otherwise (not answering,
//! not ready, not HTTP), so it can stand as a Docker or Kubernetes exec probe.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream, ToSocketAddrs};
use std::process::ExitCode;
use std::time::Duration;

use clap::Args;

#[derive(Debug, Args)]
pub struct HealthcheckArgs {
    /// The admin address (admin.listen); an unspecified host (0.0.0.0) means this machine.
    #[arg(long, default_value = "127.0.0.1:9464")]
    pub address: String,
    /// /readyz (ready to take work) or /healthz (alive).
    #[arg(long, default_value = "/readyz")]
    pub path: String,
    /// Give up after this long.
    #[arg(long, default_value_t = 3)]
    pub timeout_secs: u64,
}

pub fn main(args: &HealthcheckArgs) -> ExitCode {
    match probe(args) {
        Ok(status) if status == "200" => {
            eprintln!("{}{}: 200", args.address, args.path);
            ExitCode::SUCCESS
        }
        Ok(status) => {
            eprintln!("{}{}: {status}", args.address, args.path);
            ExitCode::from(1)
        }
        Err(err) => {
            eprintln!("{}{}: {err}", args.address, args.path);
            ExitCode::from(1)
        }
    }
}

/// The status code of the answer.
fn probe(args: &HealthcheckArgs) -> Result<String, String> {
    let timeout = Duration::from_secs(args.timeout_secs.max(1));
    let mut address: SocketAddr = args
        .address
        .to_socket_addrs()
        .map_err(|e| format!("bad address: {e}"))?
        .next()
        .ok_or("the address resolves to nothing")?;
    if address.ip().is_unspecified() {
        address.set_ip(std::net::Ipv4Addr::LOCALHOST.into());
    }
    let mut stream = TcpStream::connect_timeout(&address, timeout)
        .map_err(|e| format!("cannot connect: {e}"))?;
    let io = |e: std::io::Error| format!("no answer: {e}");
    stream.set_read_timeout(Some(timeout)).map_err(io)?;
    stream.set_write_timeout(Some(timeout)).map_err(io)?;
    // One write: a server may answer and close after the first bytes of a piecemeal request.
    let request = format!(
        "GET {} HTTP/1.0\r\nHost: {address}\r\nConnection: close\r\n\r\n",
        args.path
    );
    stream.write_all(request.as_bytes()).map_err(io)?;
    let mut head = Vec::with_capacity(256);
    let mut buf = [0u8; 256];
    while !head.contains(&b'\n') && head.len() < 4096 {
        let n = stream.read(&mut buf).map_err(io)?;
        if n == 0 {
            break;
        }
        head.extend_from_slice(&buf[..n]);
    }
    let line = String::from_utf8_lossy(&head);
    let status = line
        .lines()
        .next()
        .and_then(|l| l.strip_prefix("HTTP/"))
        .and_then(|l| l.split_whitespace().nth(1))
        .ok_or("not an HTTP answer")?;
    Ok(status.to_string())
}
