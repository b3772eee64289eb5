"""Deletes the topics a suite run created (listed in its results.json), from a process of its
own: deleting them from the bench process crashed librdkafka, whose clients there still had
them in their metadata cache. Prints whether it worked; a failure does not fail the suite."""

import json
import sys

from confluent_kafka import KafkaError
from confluent_kafka.admin import AdminClient


def main():
    brokers, results_path = sys.argv[1], sys.argv[2]
    results = json.load(open(results_path))
    topics = results.get("topics") or []
    admin = AdminClient({"bootstrap.servers": brokers})
    futures = admin.delete_topics(topics, operation_timeout=10)
    failed = []
    for topic, future in futures.items():
        try:
            future.result(timeout=30)
        except Exception as e:  # one line per topic; the run's numbers do not depend on it
            # The live part restarts the (memory) broker before its latency steps, which drops
            # every topic created before it: gone is what deleting wanted.
            code = e.args[0].code() if e.args and isinstance(e.args[0], KafkaError) else None
            if code != KafkaError.UNKNOWN_TOPIC_OR_PART:
                failed.append(f"{topic}: {e}")
    results["topics_deleted"] = not failed
    results["topics_delete_error"] = "; ".join(failed) or None
    json.dump(results, open(results_path, "w"), indent=2)
    print(f"deleted {len(topics) - len(failed)} of {len(topics)} topics", file=sys.stderr)


if __name__ == "__main__":
    main()
