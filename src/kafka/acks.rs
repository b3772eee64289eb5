//! Waiting for a producer's acknowledgements without spinning.
//!
//! rust-rdkafka 0.39's `BaseProducer::poll(t)` keeps polling until `t` has passed and hands
//! librdkafka the time left in whole milliseconds, so once less than a millisecond is left each
//! poll returns at once: a `poll(1 ms)` spins for its whole millisecond, reading the clock three
//! times a turn. The worker's commit waited for its outputs that way, and in a drain that spin
//! was about a tenth of the worker's CPU (BENCHMARKS.md, "Acknowledgements awaited without
//! spinning"). Here librdkafka calls back when an event lands on the producer's empty queue,
//! and the waiting thread sleeps on a condition variable until then; the events themselves are
//! still served by rust-rdkafka's `poll`, which never blocks here.

use std::ffi::c_void;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Condvar, Mutex, PoisonError};
use std::time::{Duration, Instant};

use rdkafka::bindings as rdsys;
use rdkafka::producer::{BaseProducer, Producer, ProducerContext};

/// Set by librdkafka's callback, waited on by the producing thread.
#[derive(Default)]
struct Signal {
    ready: AtomicBool,
    lock: Mutex<()>,
    wake: Condvar,
}

/// librdkafka runs this on one of its own threads, holding the queue's lock, when an event is
/// added to the empty queue: it must be quick and must not call librdkafka.
unsafe extern "C" fn event_ready(_: *mut rdsys::rd_kafka_t, opaque: *mut c_void) {
    // SAFETY: `opaque` is the `Signal` of an `AckWait`, which keeps it alive and turns this
    // callback off (under the same queue lock) before letting it go.
    let signal = unsafe { &*opaque.cast::<Signal>() };
    signal.ready.store(true, Ordering::SeqCst);
    // Taking the lock orders this wake-up after a waiter's check of `ready`: a waiter that saw
    // `false` is already waiting when the notification comes. The waiter never calls librdkafka
    // while holding this lock, so the two locks cannot be taken in opposite orders.
    drop(signal.lock.lock().unwrap_or_else(PoisonError::into_inner));
    signal.wake.notify_all();
}

/// The producer's event queue (delivery reports, errors), watched for new events.
pub struct AckWait {
    client: *mut rdsys::rd_kafka_t,
    queue: *mut rdsys::rd_kafka_queue_t,
    signal: Arc<Signal>,
}

// SAFETY: librdkafka's client and queue handles may be used from any thread; the callback's
// state is shared through atomics and a mutex.
unsafe impl Send for AckWait {}
// SAFETY: as above; every method takes `&self` and touches only thread-safe state.
unsafe impl Sync for AckWait {}

/// How long one wait may last even without a wake-up: a safety net only, since every event
/// wakes the waiter.
const LONGEST_WAIT: Duration = Duration::from_millis(5);

impl AckWait {
    /// Watches `producer`'s queue. Drop this before the producer.
    pub fn new<C: ProducerContext>(producer: &BaseProducer<C>) -> AckWait {
        let client = producer.client().native_ptr();
        let signal = Arc::new(Signal::default());
        // SAFETY: `client` is a live producer; the queue handle returned holds its own reference
        // and is released in `drop`, where the callback is also turned off before `signal` can go.
        let queue = unsafe {
            let queue = rdsys::rd_kafka_queue_get_main(client);
            rdsys::rd_kafka_queue_cb_event_enable(
                queue,
                Some(event_ready),
                Arc::as_ptr(&signal).cast_mut().cast(),
            );
            queue
        };
        AckWait {
            client,
            queue,
            signal,
        }
    }

    /// Serves every event that is ready (delivery reports reach the producer's context here),
    /// then, if none was, waits for the next one for up to `longest`.
    pub fn serve<C: ProducerContext>(&self, producer: &BaseProducer<C>, longest: Duration) {
        debug_assert_eq!(producer.client().native_ptr(), self.client);
        self.signal.ready.store(false, Ordering::SeqCst);
        if self.ready_events() > 0 {
            while self.ready_events() > 0 {
                // One event per call, without blocking (a zero timeout makes one pass).
                producer.poll(Duration::ZERO);
            }
        } else {
            self.wait_for_event(longest);
        }
    }

    /// Sleeps until the callback reports an event or `longest` passes. Called only when the
    /// queue was empty after `ready` was cleared, so the next event runs the callback.
    fn wait_for_event(&self, longest: Duration) {
        let guard = self
            .signal
            .lock
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        let _ = self
            .signal
            .wake
            .wait_timeout_while(guard, longest, |()| {
                !self.signal.ready.load(Ordering::SeqCst)
            })
            .unwrap_or_else(PoisonError::into_inner);
    }

    /// Serves events until `producer` has nothing in flight (every record acknowledged or
    /// failed, and its report served), or `limit` has passed: then the count still in flight.
    pub fn until_acknowledged<C: ProducerContext>(
        &self,
        producer: &BaseProducer<C>,
        limit: Duration,
    ) -> Result<(), i32> {
        let started = Instant::now();
        loop {
            let in_flight = producer.in_flight_count();
            if in_flight == 0 {
                return Ok(());
            }
            let left = limit.saturating_sub(started.elapsed());
            if left.is_zero() {
                return Err(in_flight);
            }
            self.serve(producer, left.min(LONGEST_WAIT));
        }
    }

    fn ready_events(&self) -> usize {
        // SAFETY: `queue` is live until `drop`.
        unsafe { rdsys::rd_kafka_queue_length(self.queue) }
    }
}

impl Drop for AckWait {
    fn drop(&mut self) {
        // SAFETY: turning the callback off takes the queue's lock, which the callback runs under,
        // so once this returns it is not running and will not run again; then the handle goes.
        unsafe {
            rdsys::rd_kafka_queue_cb_event_enable(self.queue, None, std::ptr::null_mut());
            rdsys::rd_kafka_queue_destroy(self.queue);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rdkafka::ClientConfig;
    use rdkafka::producer::{BaseRecord, DefaultProducerContext};

    /// This thread's user and system CPU time so far, in clock ticks (/proc, fields 14 and 15).
    fn thread_cpu_ticks() -> u64 {
        let stat = std::fs::read_to_string("/proc/thread-self/stat").unwrap_or_default();
        // The command name (field 2) may hold spaces; the fields after it do not. The first of
        // them is field 3, so field N is at N - 3.
        let after_name = stat.rsplit_once(')').map_or("", |(_, rest)| rest);
        let fields: Vec<&str> = after_name.split_whitespace().collect();
        let field = |n: usize| fields.get(n - 3).and_then(|f| f.parse::<u64>().ok());
        field(14).unwrap_or(0) + field(15).unwrap_or(0)
    }

    #[test]
    fn an_unanswered_wait_sleeps_until_its_limit_and_reports_what_is_in_flight() {
        // Nothing listens on port 1: the records stay in flight for as long as the test waits.
        let producer: BaseProducer<DefaultProducerContext> = ClientConfig::new()
            .set("bootstrap.servers", "127.0.0.1:1")
            .set("message.timeout.ms", "60000")
            .create()
            .expect("producer");
        let acks = AckWait::new(&producer);
        for _ in 0..3 {
            producer
                .send(BaseRecord::<[u8], [u8]>::to("t").payload(b"x".as_slice()))
                .expect("queued");
        }
        let limit = Duration::from_millis(600);
        let ticks_before = thread_cpu_ticks();
        let started = Instant::now();
        let outcome = acks.until_acknowledged(&producer, limit);
        let waited = started.elapsed();
        let ticks_used = thread_cpu_ticks() - ticks_before;
        assert_eq!(outcome, Err(3));
        assert!(waited >= limit, "returned after {waited:?}");
        // A spinning wait burns its whole 600 ms (about 60 ticks at 100 Hz); a sleeping one
        // almost none. A third of the wall time is far from either.
        assert!(
            ticks_used <= 20,
            "the wait used {ticks_used} ticks of CPU in {waited:?}: it spins"
        );
        drop(acks);
    }
}
