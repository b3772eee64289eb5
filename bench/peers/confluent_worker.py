"""The promo-attribution job as a hand-tuned confluent-kafka loop: batch consume, orjson, one
transaction per batch (exactly-once) or produce-flush-commit per batch (at-least-once), with the
Rust worker's client settings and batch sizes. Runs until SIGTERM/SIGINT.

    python confluent_worker.py --brokers B --input T --out PREFIX --group G --codes codes.csv
                               [--delivery exactly-once|at-least-once] [--batch 2000] [--batch-ms 100]

Outputs go to PREFIX.conversions (key order_id) and PREFIX.alerts (key alert_id).
"""

import signal
import sys
import time

import orjson
from confluent_kafka import Consumer, KafkaException, Producer

from attribution import Table, decide, job_arguments


def main():
    parser = job_arguments()
    parser.add_argument("--batch", type=int, default=2000)
    parser.add_argument("--batch-ms", type=int, default=100)
    args = parser.parse_args()
    eos = args.delivery == "exactly-once"

    table = Table(args.codes)
    stop = []
    signal.signal(signal.SIGTERM, lambda *_: stop.append(1))
    signal.signal(signal.SIGINT, lambda *_: stop.append(1))

    # The same librdkafka settings as the Rust worker's consumer_config/producer_config.
    consumer = Consumer({
        "bootstrap.servers": args.brokers,
        "group.id": args.group,
        "enable.auto.commit": False,
        "auto.offset.reset": "earliest",
        "isolation.level": "read_committed",
        "partition.assignment.strategy": "cooperative-sticky",
        "fetch.wait.max.ms": 100,
        "queued.min.messages": 20000,
        "session.timeout.ms": 6000,
        "heartbeat.interval.ms": 500,
    })
    producer_conf = {
        "bootstrap.servers": args.brokers,
        "linger.ms": 5,
        "batch.num.messages": 10000,
        "queue.buffering.max.messages": 500000,
        "compression.type": "none",
        "partitioner": "murmur2_random",
        "enable.idempotence": True,
    }
    if eos:
        producer_conf["transactional.id"] = f"{args.group}-tx"
    producer = Producer(producer_conf)
    if eos:
        producer.init_transactions(30)
    consumer.subscribe([args.input])

    conversions_topic = f"{args.out}.conversions"
    alerts_topic = f"{args.out}.alerts"
    dumps, loads = orjson.dumps, orjson.loads
    produce = producer.produce

    def send(topic, value, key):
        while True:
            try:
                produce(topic, value, key)
                return
            except BufferError:
                producer.poll(0.005)
    while not stop:
        deadline = time.monotonic() + args.batch_ms / 1000
        messages = []
        while len(messages) < args.batch and not stop:
            left = deadline - time.monotonic()
            if left <= 0:
                break
            messages.extend(consumer.consume(args.batch - len(messages), left))
        messages = [m for m in messages if m.error() is None]
        if not messages:
            continue
        if eos:
            producer.begin_transaction()
        for message in messages:
            record = message.value()
            conversion, alerts = decide(record, loads(record), table)
            send(conversions_topic, dumps(conversion), conversion["order_id"])
            for alert in alerts:
                send(alerts_topic, dumps(alert), alert["alert_id"])
            producer.poll(0)
        if eos:
            producer.send_offsets_to_transaction(
                consumer.position(consumer.assignment()),
                consumer.consumer_group_metadata(), 30)
            producer.commit_transaction(30)
        else:
            producer.flush(30)
            consumer.commit(asynchronous=True)
    consumer.close()
    return 0


if __name__ == "__main__":
    try:
        sys.exit(main())
    except KafkaException as e:
        print(f"confluent_worker: {e}", file=sys.stderr)
        sys.exit(1)
