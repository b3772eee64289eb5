//! The detector script's arguments for one call: the layout is described on `SCRIPT` in
//! `detector_state.rs`. A batch has a few hundred thousand arguments, so they are written as
//! text straight into one buffer and packed into one RESP command from there.

use std::collections::HashMap;

use crate::detectors::state::{CountRef, Gate, Op, OrderStep, Range};

/// Digits of a number written after the arguments it counts ([`Args::placeholder`]).
const PLACEHOLDER_WIDTH: usize = 9;

/// Ranges per bitmask argument: a Lua number is a double, exact below 2^53.
const MASK_BITS: usize = 50;

/// An add's shape is `members + SHAPE * ranges + SHAPE² * merges` (the script's `SHAPE`;
/// `merges` is 1 when the add merges a set first): an add's members are the order and its
/// codes, far below 2^20, and the sum stays below 2^41, exact in a double.
const SHAPE: u64 = 1 << 20;

/// The script's arguments, back to back in one buffer: a batch has a few hundred thousand of
/// them, and one allocation each would cost more than the script.
#[derive(Default)]
struct Args {
    bytes: Vec<u8>,
    ends: Vec<usize>,
}

impl Args {
    fn text(&mut self, text: &str) {
        self.bytes.extend_from_slice(text.as_bytes());
        self.ends.push(self.bytes.len());
    }

    fn number(&mut self, n: impl itoa::Integer) {
        self.build(|out| push_integer(out, n));
    }

    /// A text built piece by piece in place (`write` appends to the buffer it is given).
    fn build(&mut self, write: impl FnOnce(&mut Vec<u8>)) {
        write(&mut self.bytes);
        self.ends.push(self.bytes.len());
    }

    /// A number written later ([`Args::fill`]): its place, zero-padded to a fixed width the
    /// script reads as the number.
    fn placeholder(&mut self) -> usize {
        let at = self.bytes.len();
        self.bytes.extend_from_slice(&[b'0'; PLACEHOLDER_WIDTH]);
        self.ends.push(self.bytes.len());
        at
    }

    /// `n` must fit the width; an order's operations take a few hundred arguments at most.
    fn fill(&mut self, at: usize, n: usize) {
        let mut digits = itoa::Buffer::new();
        let text = digits.format(n).as_bytes();
        if let Some(place) = PLACEHOLDER_WIDTH
            .checked_sub(text.len())
            .and_then(|pad| self.bytes.get_mut(at + pad..at + PLACEHOLDER_WIDTH))
        {
            place.copy_from_slice(text);
        }
    }

    fn count(&self) -> usize {
        self.ends.len()
    }

    fn iter(&self) -> impl Iterator<Item = &[u8]> {
        let starts = std::iter::once(0).chain(self.ends.iter().copied());
        starts.zip(&self.ends).map(|(a, &b)| &self.bytes[a..b])
    }
}

/// One script call: the steps of one program (chunk), with their keys deduplicated.
pub(super) struct Call<'s> {
    pub(super) keys: Vec<&'s str>,
    args: Args,
}

impl<'s> Call<'s> {
    pub(super) fn new(all: &'s [OrderStep], chosen: &[usize]) -> Call<'s> {
        let mut keys: Vec<&'s str> = Vec::new();
        let mut key_index: HashMap<&'s str, usize, foldhash::fast::RandomState> =
            HashMap::default();
        let mut key = |name: &'s str| -> usize {
            *key_index.entry(name).or_insert_with(|| {
                keys.push(name);
                keys.len()
            })
        };
        let mut args = Args::default();
        args.number(crate::detectors::state::EVIDENCE_LIMIT);
        args.number(chosen.len());
        for &i in chosen {
            let step = &all[i];
            args.number(key(&step.memo_key));
            args.text(&step.fingerprint);
            args.number(step.memo_ttl_secs.max(1));
            args.number(step.ops.len());
            let skip = args.placeholder();
            let start = args.count();
            for op in &step.ops {
                match op {
                    Op::Add {
                        key: name,
                        merge_from,
                        ttl_secs,
                        members,
                        trim_below,
                        ranges,
                        evidence,
                    } => {
                        let merges = u64::from(merge_from.is_some());
                        args.number(
                            members.len() as u64
                                + SHAPE * ranges.len() as u64
                                + SHAPE * SHAPE * merges,
                        );
                        args.number(key(name));
                        args.number(*ttl_secs.max(&1));
                        match trim_below {
                            Some(bound) => args.build(|out| push_exclusive(out, *bound)),
                            None => args.text(""),
                        }
                        if let Some(from) = merge_from {
                            args.number(key(from));
                        }
                        for (score, member) in members {
                            args.number(*score);
                            args.text(member);
                            for chunk in ranges.chunks(MASK_BITS) {
                                let mask = chunk
                                    .iter()
                                    .enumerate()
                                    .filter(|(_, r)| r.contains(*score))
                                    .fold(0u64, |mask, (j, _)| mask | 1 << j);
                                args.number(mask);
                            }
                        }
                        push_ranges(&mut args, ranges);
                        let evidence_ranges = evidence.as_ref().map_or(&[][..], |e| &e.ranges);
                        args.build(|out| {
                            for (i, range) in evidence_ranges.iter().enumerate() {
                                if i > 0 {
                                    out.push(b' ');
                                }
                                push_min(out, *range);
                                out.push(b' ');
                                push_max(out, *range);
                            }
                        });
                        push_gate(&mut args, evidence.as_ref().map(|e| &e.gate));
                    }
                    Op::Tally {
                        key: name,
                        ttl_secs,
                        members,
                        top,
                        evidence,
                    } => {
                        args.number(-1 - members.len() as i128);
                        args.number(key(name));
                        args.number(*ttl_secs.max(&1));
                        for member in members {
                            args.text(member);
                        }
                        // ZREVRANGE's inclusive stop; `top` 0 gives -1 (all), as before.
                        args.number(*top as i128 - 1);
                        push_gate(&mut args, evidence.as_ref());
                    }
                }
            }
            args.fill(skip, args.count() - start);
        }
        Call { keys, args }
    }

    /// `EVALSHA` of the loaded script with this call's keys and arguments, in RESP, written
    /// straight from the argument buffer (a `redis::Cmd` would copy every argument twice).
    pub(super) fn command(&self, sha: &str) -> Vec<u8> {
        let mut packed = Vec::with_capacity(self.args.bytes.len() + 16 * self.args.count() + 64);
        let header = |out: &mut Vec<u8>, marker: u8, n: usize| {
            out.push(marker);
            push_integer(out, n);
            out.extend_from_slice(b"\r\n");
        };
        header(&mut packed, b'*', 3 + self.keys.len() + self.args.count());
        let keys = self.keys.iter().map(|k| k.as_bytes());
        let count = self.keys.len().to_string();
        let fixed = [b"EVALSHA".as_slice(), sha.as_bytes(), count.as_bytes()];
        for arg in fixed.into_iter().chain(keys).chain(self.args.iter()) {
            header(&mut packed, b'$', arg.len());
            packed.extend_from_slice(arg);
            packed.extend_from_slice(b"\r\n");
        }
        packed
    }
}

/// Each range's bounds in `ZCOUNT` syntax (the script passes them on as they are).
fn push_ranges(args: &mut Args, ranges: &[Range]) {
    for range in ranges {
        args.build(|out| push_min(out, *range));
        args.build(|out| push_max(out, *range));
    }
}

/// A gate as the script reads it: one text, a letter, then its numbers, space-separated; `-`
/// for none.
fn push_gate(args: &mut Args, gate: Option<&Gate>) {
    let at = |c: CountRef| [c.op as u64, c.range as u64];
    let (letter, numbers): (u8, [u64; 7]) = match gate {
        None => (b'-', [0; 7]),
        Some(Gate::Excess { count, limit }) => {
            let [op, range] = at(*count);
            (b'X', [op, range, *limit, 0, 0, 0, 0])
        }
        Some(Gate::Share {
            part,
            total,
            min_total,
            percent,
        }) => {
            let ([p_op, p_range], [t_op, t_range]) = (at(*part), at(*total));
            (
                b'S',
                [p_op, p_range, t_op, t_range, *min_total, *percent, 0],
            )
        }
        Some(Gate::Spike {
            uses,
            base,
            buckets,
            factor,
            floor,
        }) => {
            let ([u_op, u_range], [b_op, b_range]) = (at(*uses), at(*base));
            (
                b'P',
                [u_op, u_range, b_op, b_range, *buckets, *factor, *floor],
            )
        }
        Some(Gate::Either {
            distinct,
            unknown,
            min_distinct,
            min_unknown,
        }) => {
            let ([d_op, d_range], [u_op, u_range]) = (at(*distinct), at(*unknown));
            (
                b'E',
                [d_op, d_range, u_op, u_range, *min_distinct, *min_unknown, 0],
            )
        }
    };
    let used = match letter {
        b'X' => 3,
        b'S' | b'E' => 6,
        b'P' => 7,
        _ => 0,
    };
    args.build(|out| {
        out.push(letter);
        for n in &numbers[..used] {
            out.push(b' ');
            push_integer(out, *n);
        }
    });
}

/// The lower bound of `min <= score` in `ZCOUNT` syntax, `-inf` when open.
fn push_min(out: &mut Vec<u8>, range: Range) {
    if range.min == i64::MIN {
        out.extend_from_slice(b"-inf");
    } else {
        push_integer(out, range.min);
    }
}

/// The upper bound of `score < max` in `ZCOUNT` syntax: exclusive, `+inf` when open.
fn push_max(out: &mut Vec<u8>, range: Range) {
    if range.max == i64::MAX {
        out.extend_from_slice(b"+inf");
    } else {
        push_exclusive(out, range.max);
    }
}

/// `(<bound>`: an exclusive score bound.
fn push_exclusive(out: &mut Vec<u8>, bound: i64) {
    out.push(b'(');
    push_integer(out, bound);
}

/// An integer's decimal text, as Redis and the script read it.
fn push_integer(out: &mut Vec<u8>, n: impl itoa::Integer) {
    out.extend_from_slice(itoa::Buffer::new().format(n).as_bytes());
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_call_packs_as_redis_rs_packs_the_same_command() {
        let add = Op::Add {
            key: "p:{P1}:u:C1".into(),
            merge_from: Some("p:{P1}:c:old".into()),
            ttl_secs: 3600,
            members: vec![(1_700_000_000_000, "order-1".into()), (-5, "?X".into())],
            trim_below: Some(1_699_999_000_000),
            ranges: vec![
                Range {
                    min: i64::MIN,
                    max: i64::MAX,
                },
                Range {
                    min: 1_699_999_999_000,
                    max: 1_700_000_000_001,
                },
            ],
            evidence: None,
        };
        let tally = Op::Tally {
            key: "p:{P1}:nt:0".into(),
            ttl_secs: 60,
            members: vec!["UNKNOWN1".into()],
            top: 5,
            evidence: None,
        };
        let steps = [OrderStep {
            group: "P1".into(),
            memo_key: "p:{P1}:o:abc".into(),
            fingerprint: "f00d".into(),
            memo_ttl_secs: 86_400,
            ops: vec![add, tally],
        }];
        let call = Call::new(&steps, &[0]);
        let mut expected = redis::cmd("EVALSHA");
        expected.arg("sha").arg(call.keys.len());
        for key in &call.keys {
            expected.arg(*key);
        }
        for arg in call.args.iter() {
            expected.arg(arg);
        }
        assert_eq!(call.command("sha"), expected.get_packed_command());
    }

    #[test]
    fn bounds_exclude_the_upper_end() {
        let written = |range: Range| {
            let (mut min, mut max) = (Vec::new(), Vec::new());
            push_min(&mut min, range);
            push_max(&mut max, range);
            (
                String::from_utf8(min).expect("ascii"),
                String::from_utf8(max).expect("ascii"),
            )
        };
        assert_eq!(written(Range { min: 5, max: 9 }), ("5".into(), "(9".into()));
        assert_eq!(
            written(Range { min: -5, max: -1 }),
            ("-5".into(), "(-1".into())
        );
        assert_eq!(
            written(Range {
                min: i64::MIN,
                max: i64::MAX
            }),
            ("-inf".into(), "+inf".into())
        );
    }

    #[test]
    fn gates_and_placeholders_read_as_the_script_expects() {
        let gate = |g: Option<&Gate>| {
            let mut args = Args::default();
            push_gate(&mut args, g);
            String::from_utf8(args.bytes).expect("ascii")
        };
        let c = |op, range| CountRef { op, range };
        assert_eq!(gate(None), "-");
        assert_eq!(
            gate(Some(&Gate::Excess {
                count: c(0, 1),
                limit: 5
            })),
            "X 0 1 5"
        );
        assert_eq!(
            gate(Some(&Gate::Share {
                part: c(1, 0),
                total: c(2, 3),
                min_total: 10,
                percent: 40
            })),
            "S 1 0 2 3 10 40"
        );
        assert_eq!(
            gate(Some(&Gate::Spike {
                uses: c(0, 0),
                base: c(0, 1),
                buckets: 24,
                factor: 3,
                floor: 20
            })),
            "P 0 0 0 1 24 3 20"
        );
        assert_eq!(
            gate(Some(&Gate::Either {
                distinct: c(3, 0),
                unknown: c(3, 1),
                min_distinct: 8,
                min_unknown: 4
            })),
            "E 3 0 3 1 8 4"
        );
        let mut args = Args::default();
        let at = args.placeholder();
        args.fill(at, 1234);
        assert_eq!(args.bytes, b"000001234");
    }
}
