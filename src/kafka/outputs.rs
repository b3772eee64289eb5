//! The records the worker writes: conversions, alerts and dead letters.

use rdkafka::Message;
use rdkafka::message::{BorrowedHeaders, BorrowedMessage, Header, Headers, OwnedHeaders};

pub use crate::engine::Rejection;

/// Header names of a dead letter, modelled on Kafka Connect's `errors.deadletterqueue.context`
/// headers (its `DeadLetterQueueReporter`) so existing DLQ tooling can read them: the same
/// `__connect.errors.` prefix and names where Connect has the field, `promo.` for our own.
pub mod dlq_header {
    pub const TOPIC: &str = "__connect.errors.topic";
    pub const PARTITION: &str = "__connect.errors.partition";
    pub const OFFSET: &str = "__connect.errors.offset";
    /// Connect's connector name; here the consumer group (`kafka.group_id`), which is what names
    /// a deployment of the worker.
    pub const CONNECTOR_NAME: &str = "__connect.errors.connector.name";
    /// Connect's task id; here the worker instance (its transactional id: a pod name in a
    /// StatefulSet), so a dead letter says which instance wrote it.
    pub const TASK_ID: &str = "__connect.errors.task.id";
    /// Connect's stage: where in the pipeline the record failed, in Connect's own spellings
    /// (see [`super::stage`]).
    pub const STAGE: &str = "__connect.errors.stage";
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

/// Which worker writes the dead letters: Connect's connector name and task id.
#[derive(Debug, Clone, Copy)]
pub struct DlqWriter<'w> {
    pub connector: &'w str,
    pub task: &'w str,
}

/// Connect's stage for a rejection: an input that cannot be read as an order failed where
/// Connect converts a record's value (`VALUE_CONVERTER`); an order whose outputs are too large
/// to produce failed at `KAFKA_PRODUCE`.
pub fn stage(reason: &str) -> &'static str {
    match reason {
        "output_too_large" => "KAFKA_PRODUCE",
        _ => "VALUE_CONVERTER",
    }
}

/// The record's own headers, then the error context. The payload and key are written unchanged
/// by the caller, so a fixed record can be replayed from the DLQ as it was.
pub fn dlq_headers<H: Headers>(
    source: &Source<'_, H>,
    rejection: &Rejection,
    writer: DlqWriter<'_>,
) -> OwnedHeaders {
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
    let context: [(&str, &str); 10] = [
        (dlq_header::TOPIC, source.topic),
        (dlq_header::PARTITION, &partition),
        (dlq_header::OFFSET, &offset),
        (dlq_header::CONNECTOR_NAME, writer.connector),
        (dlq_header::TASK_ID, writer.task),
        (dlq_header::STAGE, stage(rejection.reason)),
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dead_letters_carry_connect_context_after_the_records_own_headers() {
        let own = OwnedHeaders::new().insert(Header {
            key: "trace",
            value: Some("t1"),
        });
        let source = Source {
            topic: "orders",
            partition: 2,
            offset: 41,
            key: None,
            payload: Some(b"{".as_slice()),
            headers: Some(&own),
        };
        let rejection = Rejection {
            reason: "malformed_json",
            message: "malformed JSON: EOF".into(),
        };
        let writer = DlqWriter {
            connector: "promo-attribution",
            task: "promo-attribution-0",
        };
        let headers = dlq_headers(&source, &rejection, writer);
        let pairs: Vec<(String, String)> = headers
            .iter()
            .map(|h| {
                let value = h.value.map(String::from_utf8_lossy).unwrap_or_default();
                (h.key.to_owned(), value.into_owned())
            })
            .collect();
        let get = |key: &str| {
            pairs
                .iter()
                .find(|(k, _)| k == key)
                .map(|(_, v)| v.as_str())
                .unwrap_or_else(|| panic!("no {key} in {pairs:?}"))
        };
        assert_eq!(pairs[0], ("trace".into(), "t1".into()));
        assert_eq!(get("__connect.errors.connector.name"), "promo-attribution");
        assert_eq!(get("__connect.errors.task.id"), "promo-attribution-0");
        assert_eq!(get("__connect.errors.stage"), "VALUE_CONVERTER");
        assert_eq!(get("__connect.errors.topic"), "orders");
        assert_eq!(get("__connect.errors.partition"), "2");
        assert_eq!(get("__connect.errors.offset"), "41");
        assert_eq!(get(dlq_header::REASON), "malformed_json");
        assert_eq!(stage("output_too_large"), "KAFKA_PRODUCE");
    }
}
