//! Counting a large conversions file on several threads.
//!
//! Parsing the records is most of the report's time, so each thread gets every block of lines
//! but parses only the lines of its shard, chosen by `event_id`: every copy of one `event_id`
//! lands in the same shard, so each thread's repeat and conflict counts are exact on their own,
//! and the threads' aggregators are merged at the end.

use std::io::{self, Read};
use std::sync::Arc;
use std::sync::mpsc::sync_channel;

use super::aggregate::{AddError, Aggregator, By, Selection};

/// Lines of input, cut at a line end, and the number of the first one.
pub struct Block {
    pub first_line: u64,
    pub bytes: Vec<u8>,
}

/// Bytes read at a time; a block ends at the last line end in it.
const BLOCK_BYTES: usize = 4 << 20;

/// Reads `input` as blocks of whole lines, in order.
pub fn blocks(input: impl Read) -> impl Iterator<Item = io::Result<Block>> {
    blocks_of(input, BLOCK_BYTES)
}

fn blocks_of(mut input: impl Read, size: usize) -> impl Iterator<Item = io::Result<Block>> {
    let mut carry: Vec<u8> = Vec::new();
    let mut next_line = 1u64;
    let mut done = false;
    std::iter::from_fn(move || {
        if done {
            return None;
        }
        let mut bytes = std::mem::take(&mut carry);
        let start = bytes.len();
        bytes.resize(start + size, 0);
        let mut filled = start;
        while filled < bytes.len() {
            match input.read(&mut bytes[filled..]) {
                Ok(0) => {
                    done = true;
                    break;
                }
                Ok(n) => filled += n,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => {
                    done = true;
                    return Some(Err(e));
                }
            }
        }
        bytes.truncate(filled);
        if !done {
            // Keep the partial last line for the next block.
            let cut = memchr::memrchr(b'\n', &bytes).map_or(0, |i| i + 1);
            carry = bytes.split_off(cut);
        }
        if bytes.is_empty() && done {
            return None;
        }
        let first_line = next_line;
        next_line += memchr::memchr_iter(b'\n', &bytes).count() as u64;
        Some(Ok(Block { first_line, bytes }))
    })
}

/// The lines of a block, found with SIMD: every thread scans every block, so a byte-at-a-time
/// split would cost each of them a pass over the whole input.
fn lines(bytes: &[u8]) -> impl Iterator<Item = &[u8]> {
    let mut start = 0;
    let mut ends = memchr::memchr_iter(b'\n', bytes);
    std::iter::from_fn(move || {
        let end = ends
            .next()
            .or((start < bytes.len()).then_some(bytes.len()))?;
        let line = &bytes[start..end];
        start = end + 1;
        Some(line)
    })
}

/// The shard of a record: from the text of its `event_id` where the record is written the way
/// the engine writes it, else from a parse of that one field. Records without a readable
/// `event_id` go to shard 0, which reports them. Runs on every line in every thread, so the
/// engine's own layout is recognised by its prefix and nothing is allocated.
fn shard(line: &[u8], shards: usize) -> usize {
    const KEY: &[u8] = b"\"event_id\":\"";
    const ENGINE_PREFIX: &[u8] = b"{\"schema_version\":1,\"event_id\":\"";
    let of = |id: &[u8]| (xxhash_rust::xxh3::xxh3_64(id) % shards as u64) as usize;
    let start = if line.starts_with(ENGINE_PREFIX) {
        Some(ENGINE_PREFIX.len())
    } else {
        memchr::memmem::find(line, KEY).map(|at| at + KEY.len())
    };
    if let Some(rest) = start.map(|at| &line[at..])
        && let Some(end) = memchr::memchr2(b'"', b'\\', rest)
        && rest[end] == b'"'
    {
        return of(&rest[..end]);
    }
    #[derive(serde::Deserialize)]
    struct Id {
        event_id: String,
    }
    match serde_json::from_slice::<Id>(line) {
        Ok(record) => of(record.event_id.as_bytes()),
        Err(_) => 0,
    }
}

/// Counts every line of `blocks` on `threads` threads. `add` counts one line into a thread's
/// aggregator (and reports what it skips); its first error stops that thread and is returned.
pub fn aggregate<E>(
    by: By,
    selection: &Selection,
    blocks: impl Iterator<Item = io::Result<Block>>,
    threads: usize,
    add: impl Fn(&mut Aggregator, &[u8], u64) -> Result<(), E> + Sync,
    io_error: impl Fn(io::Error) -> E,
) -> Result<Aggregator, E>
where
    E: From<AddError> + Send,
{
    let threads = threads.max(1);
    std::thread::scope(|scope| {
        let mut senders = Vec::new();
        let mut workers = Vec::new();
        for me in 0..threads {
            // Two blocks in flight per thread: enough to keep it busy, little memory.
            let (tx, rx) = sync_channel::<Arc<Block>>(2);
            senders.push(tx);
            let add = &add;
            let selection = selection.clone();
            workers.push(scope.spawn(move || {
                let mut agg = Aggregator::new(by, selection);
                for block in rx {
                    for (number, line) in (block.first_line..).zip(lines(&block.bytes)) {
                        let line = line.trim_ascii_end();
                        if !line.is_empty() && shard(line, threads) == me {
                            add(&mut agg, line, number)?;
                        }
                    }
                }
                Ok(agg)
            }));
        }
        let mut read_error = None;
        for block in blocks {
            match block {
                Ok(block) => {
                    let block = Arc::new(block);
                    // A thread that stopped on an error no longer listens; the others go on.
                    for tx in &senders {
                        let _ = tx.send(Arc::clone(&block));
                    }
                }
                Err(e) => {
                    read_error = Some(e);
                    break;
                }
            }
        }
        drop(senders);
        let mut merged: Option<Aggregator> = None;
        let mut first_error = read_error.map(io_error);
        for worker in workers {
            let result = worker
                .join()
                .unwrap_or_else(|panic| std::panic::resume_unwind(panic));
            match (result, &mut merged) {
                (Ok(agg), None) => merged = Some(agg),
                (Ok(agg), Some(all)) => {
                    if let Err(e) = all.merge(agg) {
                        first_error.get_or_insert(E::from(e));
                    }
                }
                (Err(e), _) => {
                    first_error.get_or_insert(e);
                }
            }
        }
        match (first_error, merged) {
            (Some(e), _) => Err(e),
            (None, Some(all)) => Ok(all),
            (None, None) => Ok(Aggregator::new(by, selection.clone())),
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn blocks_cut_at_line_ends_and_number_lines() {
        let text: String = (1..=3_000).map(|i| format!("line {i}\n")).collect();
        let text = format!("{text}last without newline");
        let blocks: Vec<Block> = blocks_of(text.as_bytes(), 1000)
            .map(|b| b.expect("reads"))
            .collect();
        assert!(blocks.len() > 1);
        let mut expected = 1;
        for block in &blocks {
            assert_eq!(block.first_line, expected);
            let first = block.bytes.split(|b| *b == b'\n').next().expect("a line");
            assert!(
                first == format!("line {expected}").as_bytes() || first == b"last without newline"
            );
            expected += block.bytes.iter().filter(|b| **b == b'\n').count() as u64;
        }
        let joined: Vec<u8> = blocks.into_iter().flat_map(|b| b.bytes).collect();
        assert_eq!(joined, text.as_bytes());
    }

    #[test]
    fn threads_give_what_one_thread_gives_repeats_and_conflicts_included() {
        let mut text = String::new();
        for i in 0..2_000u32 {
            let n = i % 1_500; // ids 0..500 come twice
            let partner = if i == 1_999 { "P9" } else { "P1" }; // one conflicting copy
            text.push_str(&format!(
                r#"{{"event_id":"{n:032x}","program_id":"p{}","event_time":"2026-01-01T00:00:00Z","status":"CREDITED","basis":"CODE_ALWAYS","partner_id":"{partner}","code":{{"code_id":"LI:C{}","owner_partner_id":"P1"}},"amount":{}.{:02},"currency":"USD"}}"#,
                n % 3,
                n % 7,
                n,
                n % 100
            ));
            text.push('\n');
        }
        let mut one = Aggregator::new(By::Code, Selection::default());
        for line in text.lines() {
            one.add(line.as_bytes()).expect("counts");
        }
        let many = aggregate(
            By::Code,
            &Selection::default(),
            blocks_of(text.as_bytes(), 4096),
            3,
            |agg, line, _| agg.add(line),
            |e| AddError::Unreadable(e.to_string()),
        )
        .expect("counts");
        let (one, many) = (one.finish(), many.finish());
        assert_eq!(one, many);
        assert_eq!((many.1.repeats, many.1.conflicting), (499, 1));
    }

    #[test]
    fn copies_of_an_event_id_share_a_shard_however_written() {
        let compact = br#"{"schema_version":1,"event_id":"00ff","status":"CREDITED"}"#;
        let spaced = br#"{ "status": "INVALID", "event_id" : "00ff" }"#;
        for shards in [2, 3, 7] {
            assert_eq!(shard(compact, shards), shard(spaced, shards));
        }
        assert_eq!(shard(b"{not json", 5), 0);
    }
}
