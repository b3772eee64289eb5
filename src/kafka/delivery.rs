//! What the broker answered for each record a producer sent, counted where the delivery reports
//! arrive, so that the code that waited for them can tell a batch that is in the topic from one
//! that may not be.

use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};

use rdkafka::Message;
use rdkafka::client::ClientContext;
use rdkafka::producer::{DeliveryResult, ProducerContext};

/// Failed deliveries, and successes without an offset; neither proves the record is stored.
///
/// A success without an offset is librdkafka's answer to a retried send that the broker refused
/// as a duplicate (DUPLICATE_SEQUENCE_NUMBER, answered with offset -1): "the first send was
/// stored". tansu on S3 storage records a producer's sequence before it stores the batch, so
/// when it is killed in between, a batch it never stored is reported delivered that way
/// (docs/dev-notes/2026-12-06-broker-restart-lost-outputs.md). The worker redoes such a batch and
/// the tools send it again, rather than take the broker's word.
#[derive(Debug, Default)]
pub struct DeliveryCounts {
    failed: AtomicU64,
    unplaced: AtomicU64,
    last_error: Mutex<Option<String>>,
}

/// The counts at one moment: compare two to see what happened in between.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct DeliveryMark {
    pub failed: u64,
    pub unplaced: u64,
}

impl DeliveryCounts {
    pub fn record(&self, result: &DeliveryResult<'_>) {
        match result {
            Err((err, _)) => {
                self.failed.fetch_add(1, Ordering::Relaxed);
                if let Ok(mut last) = self.last_error.lock() {
                    *last = Some(err.to_string());
                }
            }
            Ok(message) if message.offset() < 0 => {
                self.unplaced.fetch_add(1, Ordering::Relaxed);
            }
            Ok(_) => {}
        }
    }

    pub fn mark(&self) -> DeliveryMark {
        DeliveryMark {
            failed: self.failed.load(Ordering::Relaxed),
            unplaced: self.unplaced.load(Ordering::Relaxed),
        }
    }

    /// What changed since `earlier`: (failed, delivered without an offset).
    pub fn since(&self, earlier: DeliveryMark) -> DeliveryMark {
        let now = self.mark();
        DeliveryMark {
            failed: now.failed.saturating_sub(earlier.failed),
            unplaced: now.unplaced.saturating_sub(earlier.unplaced),
        }
    }

    /// The error of the last failed delivery, or "" before any.
    pub fn last_error(&self) -> String {
        self.last_error
            .lock()
            .ok()
            .and_then(|last| last.clone())
            .unwrap_or_default()
    }
}

/// A producer context of its own for tools, which log through librdkafka's defaults.
impl ClientContext for DeliveryCounts {}

impl ProducerContext for DeliveryCounts {
    type DeliveryOpaque = ();

    fn delivery(&self, result: &DeliveryResult<'_>, _: ()) {
        self.record(result);
    }
}
