//! The engine: input records in, the records to write out, with no Kafka, files or clock.
//!
//! It owns the whole way from bytes to bytes — parse, decide, the stateful detectors (plan, one
//! state step for the batch, finish), serialize, size check — so the worker, the offline mode and
//! the benches cannot disagree: they all call [`Engine::run`]. The detector state is handed in
//! (Redis for the worker, memory for the offline mode and tests), which is what makes "the
//! stream gives the same bytes as the offline mode" hold by construction.
//!
//! Each record is parsed once and its codes matched once: the decision carries the matched
//! codes on to the detectors.

mod adjustments;
mod outputs;

use std::sync::Arc;

use crate::attribution::{Decision, decide};
use crate::codes::CodeTable;
use crate::detectors::{DetectorState, Detectors, StateError};
use crate::reversals::output::Reversals;
use crate::schema::{ValidOrder, parse_order};
use crate::settings::Settings;

pub use outputs::{Adjusted, Decided, Outputs, RecordOutcome, Rejection, Write, WriteKind};

/// Why a batch could not be finished. Nothing of the batch is in the outputs then.
#[derive(Debug, thiserror::Error)]
pub enum EngineError {
    /// The detector state could not be reached or answered nonsense: redo the batch later.
    #[error("detector state: {0}")]
    State(#[from] StateError),
    /// A conversion or alert could not be serialized; a bug, not a property of the input.
    #[error("serialize {what}: {message}")]
    Serialize { what: &'static str, message: String },
}

/// The rules, the detectors and the output limits of one worker or offline run.
pub struct Engine {
    settings: Arc<Settings>,
    /// `None` when `detectors.enabled` is off.
    detectors: Option<Detectors>,
    /// `None` when `reversals.enabled` is off.
    reversals: Option<Reversals>,
    max_output_bytes: usize,
}

impl Engine {
    pub fn new(settings: Arc<Settings>) -> Engine {
        let detectors = settings
            .detectors
            .enabled
            .then(|| Detectors::new(&settings.detectors, &settings.store.key_prefix));
        let reversals = settings
            .reversals
            .enabled
            .then(|| Reversals::new(&settings.reversals, &settings.store.key_prefix));
        let max_output_bytes = max_output_bytes(&settings);
        Engine {
            settings,
            detectors,
            reversals,
            max_output_bytes,
        }
    }

    /// Whether [`Engine::run`] needs a detector state: with the detectors or the reversals on,
    /// records are best run in batches, so the state is asked once per batch.
    pub fn uses_state(&self) -> bool {
        self.detectors.is_some() || self.reversals.is_some()
    }

    pub fn settings(&self) -> &Settings {
        &self.settings
    }

    /// The largest output value that is written rather than dead-lettered.
    pub fn max_output_bytes(&self) -> usize {
        self.max_output_bytes
    }

    /// Decides `records` in order and appends one [`RecordOutcome`] per record to `out`. With
    /// the detectors on, their state is asked once, for the whole batch, before anything is
    /// appended: on failure `out` is left as it was, so a batch is never half decided.
    pub fn run(
        &self,
        table: &CodeTable,
        state: Option<&mut dyn DetectorState>,
        records: &[&[u8]],
        out: &mut Outputs,
    ) -> Result<(), EngineError> {
        if !self.uses_state() {
            // Without state each record stands alone: no batch-wide vectors to build.
            return all_or_nothing(out, |out| {
                for (input, record) in records.iter().enumerate() {
                    match parse_record(record, &self.settings) {
                        Ok(order) => {
                            let decision =
                                decide(record, &order, table, &self.settings.attribution);
                            out.push_decision(input, &order, &decision, self.max_output_bytes)?;
                        }
                        Err(rejection) => out.push_rejection(input, rejection),
                    }
                }
                Ok(())
            });
        }
        let parsed: Vec<Result<ValidOrder<'_>, Rejection>> = records
            .iter()
            .map(|record| parse_record(record, &self.settings))
            .collect();
        let requests = adjustments::read_requests(self.reversals.as_ref(), records, &parsed);
        let mut decisions: Vec<Option<Decision<'_>>> = parsed
            .iter()
            .zip(records)
            .zip(&requests)
            .map(|((order, record), request)| match (order, request) {
                (Ok(o), None) => Some(decide(record, o, table, &self.settings.attribution)),
                _ => None,
            })
            .collect();
        let state = state.ok_or_else(|| {
            StateError("the detectors or reversals are on but no state was given".into())
        })?;
        if let Some(detectors) = &self.detectors {
            detect(detectors, state, table, &parsed, &mut decisions)?;
        }
        let finished = match &self.reversals {
            Some(reversals) => adjustments::step(
                reversals,
                self.detectors.as_ref(),
                state,
                table,
                &parsed,
                &decisions,
                &requests,
            )?,
            None => Vec::new(),
        };
        all_or_nothing(out, |out| {
            for (input, (order, decision)) in parsed.iter().zip(&decisions).enumerate() {
                match (order, decision) {
                    (Ok(order), Some(decision)) => {
                        out.push_decision(input, order, decision, self.max_output_bytes)?
                    }
                    (Err(rejection), _) => out.push_rejection(input, rejection.clone()),
                    (Ok(order), None) if requests.get(input).is_some_and(Option::is_some) => {
                        match (
                            &requests[input],
                            finished.get(input).and_then(Option::as_ref),
                        ) {
                            (Some(Err(rejection)), _) => {
                                out.push_rejection(input, rejection.clone())
                            }
                            (_, Some(done)) => {
                                out.push_adjustment(input, order, done, self.max_output_bytes)?
                            }
                            _ => {
                                return Err(EngineError::Serialize {
                                    what: "adjustment",
                                    message: "an adjustment without an outcome".into(),
                                });
                            }
                        }
                    }
                    (Ok(_), None) => {
                        return Err(EngineError::Serialize {
                            what: "decision",
                            message: "a parsed order without a decision".into(),
                        });
                    }
                }
            }
            Ok(())
        })
    }
}

/// Runs `fill`, and takes back everything it appended if it fails: a batch is never half in the
/// outputs.
fn all_or_nothing(
    out: &mut Outputs,
    fill: impl FnOnce(&mut Outputs) -> Result<(), EngineError>,
) -> Result<(), EngineError> {
    let mark = out.mark();
    fill(out).inspect_err(|_| out.truncate(mark))
}

/// An empty record is refused before parsing, with its own reason: producers send them by
/// mistake (tombstones, a lost value) and the dead letter should say so plainly.
fn parse_record<'a>(record: &'a [u8], settings: &Settings) -> Result<ValidOrder<'a>, Rejection> {
    if record.is_empty() {
        return Err(Rejection {
            reason: "empty_record",
            message: "record has no value".into(),
        });
    }
    parse_order(record, &settings.limits).map_err(|err| Rejection::from(&err))
}

/// Plans every decided order, applies all their steps with one call to the state, then turns
/// the counts into alerts (and invalidations) on the decisions, in input order.
fn detect<'a>(
    detectors: &Detectors,
    state: &mut dyn DetectorState,
    table: &'a CodeTable,
    parsed: &'a [Result<ValidOrder<'a>, Rejection>],
    decisions: &mut [Option<Decision<'a>>],
) -> Result<(), StateError> {
    let mut plans = Vec::with_capacity(decisions.len());
    let mut steps = Vec::with_capacity(decisions.len());
    for (order, decision) in parsed.iter().zip(decisions.iter()) {
        if let (Ok(order), Some(decision)) = (order, decision) {
            let mut plan = detectors.plan(order, decision, table);
            steps.push(std::mem::take(&mut plan.step));
            plans.push(plan);
        }
    }
    let outcomes = state.apply(&steps)?;
    if outcomes.len() != steps.len() {
        return Err(StateError(format!(
            "{} outcomes for {} orders",
            outcomes.len(),
            steps.len()
        )));
    }
    let mut planned = plans.iter().zip(&outcomes);
    for (order, decision) in parsed.iter().zip(decisions.iter_mut()) {
        if let (Ok(order), Some(decision)) = (order, decision) {
            let (plan, outcome) = planned
                .next()
                .ok_or_else(|| StateError("fewer plans than decisions".into()))?;
            detectors.finish(plan, outcome, order, decision, table);
        }
    }
    Ok(())
}

/// The largest record the producer accepts (librdkafka's `message.max.bytes`, 1,000,000 unless
/// configured), less room for key and headers. The offline mode applies the same limit, so a
/// record the worker would dead-letter is rejected there too.
fn max_output_bytes(settings: &Settings) -> usize {
    const HEADROOM: usize = 16 * 1024;
    let kafka = &settings.kafka;
    kafka
        .producer
        .get("message.max.bytes")
        .or_else(|| kafka.common.get("message.max.bytes"))
        .and_then(|v| v.parse::<usize>().ok())
        .unwrap_or(1_000_000)
        .saturating_sub(HEADROOM)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::codes::load::read_codes_lenient;
    use crate::codes::table::BuildOptions;
    use crate::detectors::{MemoryState, OrderStep, StepOutcome};
    use crate::schema::Status;

    const CODES: &str =
        "Promo Code,Program Id,Media Id,Type,Credit Rule\nSAVE10,1,100,TRACKING,ALWAYS\n";

    fn table() -> CodeTable {
        let (entries, problems) = read_codes_lenient(CODES.as_bytes(), "codes");
        assert!(problems.is_empty(), "{problems:?}");
        CodeTable::build(entries, Vec::new(), "v1", "codes", BuildOptions::default())
            .expect("table")
    }

    fn order(id: &str) -> Vec<u8> {
        format!(
            r#"{{"order_id":"{id}","program_id":"1","event_type":"sale","event_time":"2026-05-10T12:00:00Z","promo_codes":["save10"]}}"#
        )
        .into_bytes()
    }

    fn with_detectors() -> Settings {
        let mut settings = Settings::default();
        settings.detectors.enabled = true;
        settings.detectors.customer_hmac_key = "test-key-0123456789".into();
        settings
    }

    struct Unreachable;

    impl DetectorState for Unreachable {
        fn apply(&mut self, _: &[OrderStep]) -> Result<Vec<StepOutcome>, StateError> {
            Err(StateError("connection refused".into()))
        }
    }

    #[test]
    fn each_record_gets_one_outcome_in_input_order() {
        let engine = Engine::new(Arc::new(Settings::default()));
        let (a, b) = (order("A"), order("B"));
        let records: [&[u8]; 4] = [&a, b"", b"{not json", &b];
        let mut out = Outputs::default();
        engine.run(&table(), None, &records, &mut out).expect("run");
        let seen: Vec<(usize, Result<Status, &str>)> = out
            .iter()
            .map(|r| {
                (
                    r.input,
                    r.result.as_ref().map(|d| d.status).map_err(|e| e.reason),
                )
            })
            .collect();
        assert_eq!(
            seen,
            [
                (0, Ok(Status::Credited)),
                (1, Err("empty_record")),
                (2, Err("malformed_json")),
                (3, Ok(Status::Credited)),
            ]
        );
        let first = out.iter().next().expect("an outcome");
        let writes: Vec<_> = first.writes().collect();
        assert_eq!(writes.len(), 1, "one conversion, no alert");
        assert_eq!(writes[0].kind, WriteKind::Conversion);
        assert_eq!(writes[0].key, b"A");
        let conversion: serde_json::Value =
            serde_json::from_slice(writes[0].value).expect("conversion JSON");
        assert_eq!(conversion["partner_id"], "100");
    }

    #[test]
    fn an_output_over_the_producer_limit_becomes_a_rejection() {
        let mut settings = Settings::default();
        settings
            .kafka
            .producer
            .insert("message.max.bytes".into(), (16 * 1024 + 100).to_string());
        let engine = Engine::new(Arc::new(settings));
        assert_eq!(engine.max_output_bytes(), 100);
        let record = order("A");
        let mut out = Outputs::default();
        engine
            .run(&table(), None, &[&record], &mut out)
            .expect("run");
        let outcome = out.iter().next().expect("an outcome");
        assert_eq!(
            outcome.result.as_ref().map_err(|e| e.reason),
            Err("output_too_large")
        );
        assert_eq!(
            outcome.writes().count(),
            0,
            "nothing of the decision is kept"
        );
    }

    #[test]
    fn a_failed_state_step_leaves_the_outputs_as_they_were() {
        let engine = Engine::new(Arc::new(with_detectors()));
        let table = table();
        let (a, b) = (order("A"), order("B"));
        let mut out = Outputs::default();
        engine
            .run(&table, Some(&mut MemoryState::new()), &[&a], &mut out)
            .expect("first batch");
        let failed = engine.run(&table, Some(&mut Unreachable), &[&b], &mut out);
        assert!(matches!(failed, Err(EngineError::State(_))), "{failed:?}");
        assert_eq!(out.len(), 1, "only the first batch's outcome");
        let missing = engine.run(&table, None, &[&b], &mut out);
        assert!(
            matches!(missing, Err(EngineError::State(_))),
            "detectors on and no state: {missing:?}"
        );
        assert_eq!(out.len(), 1);
    }

    #[test]
    fn a_batch_gives_the_same_bytes_as_its_records_one_by_one() {
        let engine = Engine::new(Arc::new(with_detectors()));
        let table = table();
        // O0 and O1 come back with other content (a duplicate order id, an alert and an
        // invalidation), O2 comes back byte for byte (a replay: the first outputs again).
        let mut records: Vec<Vec<u8>> = (0..4).map(|i| order(&format!("O{i}"))).collect();
        for i in 0..2 {
            let changed = String::from_utf8(order(&format!("O{i}")))
                .expect("utf8")
                .replace("save10", "SAVE10");
            records.push(changed.into_bytes());
        }
        records.push(order("O2"));
        let slices: Vec<&[u8]> = records.iter().map(Vec::as_slice).collect();
        let bytes = |out: &Outputs| -> Vec<Vec<u8>> {
            out.iter()
                .flat_map(|r| r.writes().map(|w| w.value.to_vec()).collect::<Vec<_>>())
                .collect()
        };
        let mut together = Outputs::default();
        engine
            .run(
                &table,
                Some(&mut MemoryState::new()),
                &slices,
                &mut together,
            )
            .expect("batch");
        let mut alone = Outputs::default();
        let mut state = MemoryState::new();
        for record in &slices {
            engine
                .run(&table, Some(&mut state), &[record], &mut alone)
                .expect("one");
        }
        assert_eq!(bytes(&together), bytes(&alone));
        assert!(
            bytes(&together).len() > records.len(),
            "the changed repeats raise duplicate alerts"
        );
    }
}
