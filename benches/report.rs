//! `promo-attribution report` over 1,000,000 conversions (issue 14: at most 2 s on the project
//! machine). Writes a JSON-lines file of conversions shaped like the engine's (every field,
//! code and winning click objects, money in three currencies and none, 1 % byte-identical
//! repeats), then times the release binary end to end — file read, parse, dedup, exact sums,
//! JSON output — best and median of a few runs, and the in-process aggregation alone.
//!
//! Run with `cargo bench --bench report` (PROMO_REPORT_BENCH_RECORDS changes the count).

// Test code fails loudly; Cargo.toml's no-unwrap lints are for the service.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::io::{BufWriter, Write};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use promo_attribution::report::{Aggregator, By, Selection};

const SEED: u64 = 0x5EED_0014;
const RUNS: usize = 5;

/// splitmix64: a fixed, dependency-free sequence, so every run reads the same file.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }
}

fn conversion(rng: &mut Rng, n: u64) -> String {
    let program = 1001 + rng.below(3);
    let code = rng.below(5_000);
    let owner = 2000 + code % 700;
    let clicker = 2000 + rng.below(700);
    let cents = rng.below(50_000);
    let amount = format!("{}.{:02}", cents / 100, cents % 100);
    let currency = ["\"USD\"", "\"USD\"", "\"EUR\"", "\"GBP\"", "null"][rng.below(5) as usize];
    let (status, basis, partner, reason, invalid_partner) = match rng.below(10) {
        0..=5 => (
            "CREDITED",
            "\"CODE_WINNER\"",
            format!("\"{owner}\""),
            "null",
            "null".into(),
        ),
        6 => (
            "CREDITED",
            "\"CLICK\"",
            format!("\"{clicker}\""),
            "null",
            "null".into(),
        ),
        7 => (
            "INVALID",
            "null",
            "null".into(),
            "\"CODE_EXPIRED\"",
            format!("\"{owner}\""),
        ),
        8 => (
            "INVALID",
            "null",
            "null".into(),
            "\"CODE_OWNED_BY_OTHER_PARTNER\"",
            format!("\"{clicker}\""),
        ),
        _ => ("UNATTRIBUTED", "null", "null".into(), "null", "null".into()),
    };
    let (code_json, click_json, involved) = if status == "UNATTRIBUTED" {
        ("null".to_string(), "null".to_string(), String::new())
    } else {
        (
            format!(
                r#"{{"entered":"code{code}","code_id":"LI:CODE{code}","match_type":"EXACT","owner_partner_id":"{owner}","credit_policy":"WINNER","deal_id":null}}"#
            ),
            format!(
                r#"{{"partner_id":"{clicker}","click_id":"click-{n}","ts":"2026-05-10T10:00:00Z","credit_group":"PREFERRED"}}"#
            ),
            format!("\"{clicker}\""),
        )
    };
    format!(
        r#"{{"schema_version":1,"event_id":"{n:032x}","order_id":"order-{n}","program_id":"{program}","event_type":"sale","event_time":"2026-05-10T12:00:00Z","amount":{amount},"discount":{discount},"currency":{currency},"status":"{status}","basis":{basis},"partner_id":{partner},"invalid_reason":{reason},"invalid_partner_id":{invalid_partner},"overridden_partner_id":null,"code":{code_json},"winning_click":{click_json},"involved_partners":[{involved}],"unknown_codes":[],"code_table_version":"file-d61d937a46bbf7a2"}}"#,
        discount = if cents.is_multiple_of(3) {
            "null".to_string()
        } else {
            format!("{}.50", cents / 1000)
        },
    )
}

/// CPU time (user + system) of the finished child processes so far: on a shared machine the
/// wall time depends on the neighbours, the CPU time much less.
fn children_cpu() -> Duration {
    // SAFETY: getrusage writes into the struct it is given and reads nothing else.
    let mut usage: libc::rusage = unsafe { std::mem::zeroed() };
    unsafe { libc::getrusage(libc::RUSAGE_CHILDREN, &mut usage) };
    let tv = |t: libc::timeval| Duration::new(t.tv_sec as u64, t.tv_usec as u32 * 1000);
    tv(usage.ru_utime) + tv(usage.ru_stime)
}

fn median(mut times: Vec<Duration>) -> Duration {
    times.sort_unstable();
    times[times.len() / 2]
}

fn main() {
    let records: u64 = std::env::var("PROMO_REPORT_BENCH_RECORDS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(1_000_000);
    let dir = tempfile::tempdir().expect("temp dir");
    let path = dir.path().join("conversions.jsonl");
    let mut rng = Rng(SEED);
    let mut lines: Vec<String> = Vec::new();
    {
        let mut out = BufWriter::new(std::fs::File::create(&path).expect("create"));
        let mut written = 0;
        let mut n = 0;
        while written < records {
            // 1 % of the records repeat an earlier one byte for byte, as a crash leaves them.
            let line = if !lines.is_empty() && rng.below(100) == 0 {
                lines[rng.below(lines.len() as u64) as usize].clone()
            } else {
                n += 1;
                conversion(&mut rng, n)
            };
            out.write_all(line.as_bytes()).expect("write");
            out.write_all(b"\n").expect("write");
            if lines.len() < 200_000 {
                lines.push(line);
            }
            written += 1;
        }
        out.flush().expect("flush");
    }
    let size = std::fs::metadata(&path).expect("file").len();
    println!(
        "report bench: {records} conversions, {:.0} MB",
        size as f64 / 1e6
    );

    let binary = env!("CARGO_BIN_EXE_promo-attribution");
    let mut times = Vec::new();
    let mut cpu = Vec::new();
    for _ in 0..RUNS {
        let cpu_before = children_cpu();
        let started = Instant::now();
        let output = Command::new(binary)
            .args(["report", "--format", "json", "--conversions"])
            .arg(&path)
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .output()
            .expect("report runs");
        times.push(started.elapsed());
        cpu.push(children_cpu() - cpu_before);
        assert!(
            output.status.success(),
            "{}",
            String::from_utf8_lossy(&output.stderr)
        );
    }
    let best = times.iter().min().copied().unwrap_or_default();
    println!(
        "report --by code --format json, end to end: best {:.3} s, median {:.3} s of {RUNS} runs ({:.0} k conversions/s at best)",
        best.as_secs_f64(),
        median(times).as_secs_f64(),
        records as f64 / best.as_secs_f64() / 1e3
    );
    println!(
        "  CPU (user + system, all threads): best {:.3} s, median {:.3} s; threads: {}",
        cpu.iter().min().copied().unwrap_or_default().as_secs_f64(),
        median(cpu).as_secs_f64(),
        std::thread::available_parallelism().map_or(1, |n| n.get())
    );

    // The aggregation alone, in memory, over the first 200,000 lines.
    let started = Instant::now();
    let mut agg = Aggregator::new(By::Code, Selection::default());
    for line in &lines {
        agg.add(line.as_bytes()).expect("counts");
    }
    let elapsed = started.elapsed();
    println!(
        "aggregation in process: {:.0} ns per conversion over {} conversions ({} rows)",
        elapsed.as_nanos() as f64 / lines.len() as f64,
        lines.len(),
        agg.finish().0.len()
    );
}
