//! The records the worker writes: conversions, alerts and dead letters.

use rdkafka::Message;
use rdkafka::message::{BorrowedHeaders, BorrowedMessage, Header, Headers, OwnedHeaders};

pub use crate::engine::Rejection;

/// Header names of a dead letter, modelled on Kafka Connect's `errors.deadletterqueue.context`
/// headers so existing DLQ tooling can read them.
pub mod dlq_header {
    pub const TOPIC: &str = "__connect.errors.topic";
    pub const PARTITION: &str = "__connect.errors.partition";
    pub const OFFSET: &str = "__connect.errors.offset";
    pub const CLASS: &str = "__connect.errors.exception.class.name";
    pub const MESSAGE: &str = "__connect.errors.exception.message";
    /// The short stable reason (`malformed_json`, `oversize`, ...), also the metric label.
    pub const REASON: &str = "promo.dlq.reason";
    pub const WORKER_VERSION: &str = "promo.worker.version";
    /// Set, to the original size in bytes, when the value was too large to dead-letter.
    pub const PAYLOAD_OMITTED: &str = "promo.dlq.payload.omitted.bytes";
}

/// A consumed record's coordinates and content, borrowed from the message or, for a record held
/// until commit, from the batch's copy of it.
pub struct Source<'m, H: Headers> {
    pub topic: &'m str,
    pub partition: i32,
    pub offset: i64,
    pub key: Option<&'m [u8]>,
    pub payload: Option<&'m [u8]>,
    pub headers: Option<&'m H>,
}

impl<'m> Source<'m, BorrowedHeaders> {
    pub fn of(message: &'m BorrowedMessage<'_>) -> Self {
        Source {
            topic: message.topic(),
            partition: message.partition(),
            offset: message.offset(),
            key: message.key(),
            payload: message.payload(),
            headers: message.headers(),
        }
    }
}

/// The record's own headers, then the error context. The payload and key are written unchanged
/// by the caller, so a fixed record can be replayed from the DLQ as it was.
pub fn dlq_headers<H: Headers>(source: &Source<'_, H>, rejection: &Rejection) -> OwnedHeaders {
    let mut headers = OwnedHeaders::new();
    if let Some(original) = source.headers {
        for header in original.iter() {
            headers = headers.insert(Header {
                key: header.key,
                value: header.value,
            });
        }
    }
    let partition = source.partition.to_string();
    let offset = source.offset.to_string();
    let class = format!("promo_attribution.{}", rejection.reason);
    let context: [(&str, &str); 7] = [
        (dlq_header::TOPIC, source.topic),
        (dlq_header::PARTITION, &partition),
        (dlq_header::OFFSET, &offset),
        (dlq_header::CLASS, &class),
        (dlq_header::MESSAGE, &rejection.message),
        (dlq_header::REASON, rejection.reason),
        (dlq_header::WORKER_VERSION, env!("CARGO_PKG_VERSION")),
    ];
    for (key, value) in context {
        headers = headers.insert(Header {
            key,
            value: Some(value),
        });
    }
    headers
}
