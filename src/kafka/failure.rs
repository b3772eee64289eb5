//! What a failure means for the worker. Bad input is not a failure here (it is dead-lettered as
//! part of normal processing); these are the failures of the machinery around it.

use rdkafka::error::KafkaError;

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Failure {
    /// The open transaction must be aborted and the batch redone from the last committed
    /// offsets, after a pause. Nothing is dead-lettered or skipped.
    #[error("transient: {0}")]
    Transient(String),
    /// The same call may simply be made again (librdkafka says the operation is resumable).
    #[error("retriable: {0}")]
    Retriable(String),
    /// The worker cannot continue safely (fenced by a newer instance, fatal client error,
    /// unexpected transactional state): exit non-zero and let the supervisor restart it.
    #[error("fatal: {0}")]
    Fatal(String),
}

impl Failure {
    /// librdkafka's classes for transactional calls: fatal, abortable, retriable; an error with
    /// none of these flags is treated as fatal, as librdkafka's documentation asks.
    pub fn from_transactional(context: &str, err: &KafkaError) -> Failure {
        let message = format!("{context}: {err}");
        match err {
            KafkaError::Transaction(rde) if rde.is_fatal() => Failure::Fatal(message),
            KafkaError::Transaction(rde) if rde.txn_requires_abort() => Failure::Transient(message),
            KafkaError::Transaction(rde) if rde.is_retriable() => Failure::Retriable(message),
            // rust-rdkafka flushes before committing and reports a flush timeout without any
            // transactional flag: the outcome is unknown, so the commit is retried.
            KafkaError::Flush(_) => Failure::Retriable(message),
            _ => Failure::Fatal(message),
        }
    }

    /// Errors of plain produce and consume calls.
    pub fn from_client(context: &str, err: &KafkaError) -> Failure {
        let message = format!("{context}: {err}");
        match err.rdkafka_error_code() {
            Some(code) if is_fatal_code(code) => Failure::Fatal(message),
            _ => Failure::Transient(message),
        }
    }
}

fn is_fatal_code(code: rdkafka::types::RDKafkaErrorCode) -> bool {
    use rdkafka::types::RDKafkaErrorCode as C;
    matches!(
        code,
        C::Fatal
            | C::Fenced
            | C::ProducerFenced
            | C::InvalidProducerEpoch
            | C::TransactionalIdAuthorizationFailed
            | C::TopicAuthorizationFailed
            | C::GroupAuthorizationFailed
            | C::ClusterAuthorizationFailed
            | C::Authentication
            | C::SaslAuthenticationFailed
            | C::InvalidTransactionTimeout
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use rdkafka::types::RDKafkaErrorCode;

    #[test]
    fn flush_timeouts_are_retried_and_unknown_errors_are_fatal() {
        let flush = KafkaError::Flush(RDKafkaErrorCode::OperationTimedOut);
        assert!(matches!(
            Failure::from_transactional("commit", &flush),
            Failure::Retriable(_)
        ));
        let other = KafkaError::Subscription("x".into());
        assert!(matches!(
            Failure::from_transactional("commit", &other),
            Failure::Fatal(_)
        ));
        let fenced = KafkaError::MessageProduction(RDKafkaErrorCode::Fenced);
        assert!(matches!(
            Failure::from_client("send", &fenced),
            Failure::Fatal(_)
        ));
        let down = KafkaError::MessageProduction(RDKafkaErrorCode::AllBrokersDown);
        assert!(matches!(
            Failure::from_client("send", &down),
            Failure::Transient(_)
        ));
    }
}
