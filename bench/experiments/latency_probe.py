"""Where a conversion's end-to-end latency goes: sends orders at a fixed rate to a running
worker's input topic (order ids carry no time; send times are kept here) and times when each
conversion becomes visible to a read_uncommitted reader (written by the worker) and to a
read_committed reader (its transaction committed). With the worker's admin address it also
prints the mean commit time from `promo_commit_latency_seconds` over the run.

    bench/.venv/bin/python bench/experiments/latency_probe.py BROKERS INPUT CONVERSIONS \\
        RATE SECONDS [ADMIN_HOST:PORT] [ORDERS_JSONL]

Diagnostic, not part of the suite: Python's threads add a few ms of their own, so compare runs
of this probe with each other (e.g. a fresh broker against one that served a long run), not
with the suite's numbers. Used for BENCHMARKS.md, "Latency on a fresh broker".
"""

import json
import random
import sys
import threading
import time
import urllib.request

from confluent_kafka import Consumer, Producer, TopicPartition


def load_orders(path):
    orders = []
    for line in open(path):
        try:
            order = json.loads(line)
        except ValueError:
            continue
        if isinstance(order, dict) and isinstance(order.get("order_id"), str):
            orders.append(order)
    return orders


def read_visible(brokers, topic, isolation, seen, stop):
    reader = Consumer({
        "bootstrap.servers": brokers,
        "group.id": f"latency-probe-{isolation}-{random.random()}",
        "isolation.level": f"read_{isolation}",
        "fetch.wait.max.ms": 10,
        "enable.auto.commit": False,
    })
    reader.assign([TopicPartition(topic, p, -1) for p in range(3)])  # -1: the end
    while not stop.is_set():
        message = reader.poll(0.05)
        if message is None or message.error():
            continue
        order_id = json.loads(message.value()).get("order_id", "")
        if order_id.startswith("probe-"):
            seen[order_id] = time.time()
    reader.close()


def commit_seconds(admin):
    """{name: (sum, count)} of the worker's commit histogram ("commit") and of each commit phase
    ("held", "offsets", ...), or None without an admin address."""
    if not admin:
        return None
    try:
        text = urllib.request.urlopen(f"http://{admin}/metrics", timeout=5).read().decode()
    except OSError:
        return None
    values = {}
    for line in text.splitlines():
        for suffix in ("_sum", "_count"):
            for metric in ("promo_commit_latency_seconds", "promo_commit_phase_seconds"):
                if line.startswith(metric + suffix):
                    name = line.split('phase="')[1].split('"')[0] if "phase=" in line else "commit"
                    total, count = values.get(name, (0.0, 0.0))
                    value = float(line.split()[-1])
                    values[name] = (value, count) if suffix == "_sum" else (total, value)
    return values


def percentile(values, q):
    values = sorted(values)
    return values[min(len(values) - 1, int(q * (len(values) - 1)))] * 1000 if values else float("nan")


def main():
    brokers, topic, conversions = sys.argv[1], sys.argv[2], sys.argv[3]
    rate, seconds = float(sys.argv[4]), float(sys.argv[5])
    admin = sys.argv[6] if len(sys.argv) > 6 else None
    orders = load_orders(sys.argv[7] if len(sys.argv) > 7 else "samples/orders.jsonl")
    producer = Producer({"bootstrap.servers": brokers, "linger.ms": 5})
    seen = {"uncommitted": {}, "committed": {}}
    stop = threading.Event()
    readers = [threading.Thread(target=read_visible, args=(brokers, conversions, iso, seen[iso], stop))
               for iso in seen]
    for reader in readers:
        reader.start()
    time.sleep(3)  # the readers' assignment at the end must precede the first send
    before = commit_seconds(admin)
    sent = {}
    started = time.time()
    count = 0
    while time.time() - started < seconds:
        due = int((time.time() - started) * rate)
        while count < due:
            order = dict(orders[count % len(orders)])
            order["order_id"] = f"probe-{count}"
            sent[order["order_id"]] = time.time()
            producer.produce(topic, json.dumps(order).encode(), key=order["order_id"].encode())
            count += 1
        producer.poll(0)
        time.sleep(0.0005)
    producer.flush()
    time.sleep(5)
    stop.set()
    for reader in readers:
        reader.join()
    after = commit_seconds(admin)
    for iso, times in seen.items():
        latencies = [times[k] - sent[k] for k in times if k in sent]
        print(f"visible {iso}: {len(latencies)} of {len(sent)}: p50 {percentile(latencies, .5):.1f} "
              f"p99 {percentile(latencies, .99):.1f} p99.9 {percentile(latencies, .999):.1f} ms")
    if before and after:
        for name, (total, count) in after.items():
            total0, count0 = before.get(name, (0.0, 0.0))
            if count > count0:
                print(f"worker {name}: {count - count0:.0f}, mean "
                      f"{(total - total0) / (count - count0) * 1000:.2f} ms")


if __name__ == "__main__":
    main()
