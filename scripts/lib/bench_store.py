"""Benchmarks of the Redis code store (issue 4), on the local Redis and broker:

1. `codes import` of a table of 1 M exact + 10 k regex codes (wall time, peak RSS);
2. worker cold start from that table (time to the table being in force, RSS after load);
3. change-to-effect: publish of a single-code edit -> the worker using the new version, from
   the worker's own log (`since_publish_ms`, measured against Redis's clock at the publish), for
   patched edits and for full reloads.

Called by scripts/bench-store, which starts the services and builds the release binary.
Prints a Markdown table at the end.
"""

import json
import os
import random
import re
import resource
import statistics
import subprocess
import sys
import time
import urllib.request

BIN = sys.argv[1]
REDIS = sys.argv[2]
BROKERS = sys.argv[3]
OUT = sys.argv[4]
EXACT = int(os.environ.get("BENCH_EXACT", "1000000"))
REGEX = int(os.environ.get("BENCH_REGEX", "10000"))
EDITS = int(os.environ.get("BENCH_EDITS", "40"))
RELOADS = int(os.environ.get("BENCH_RELOADS", "5"))
run = f"bench-store-{int(time.time())}"
prefix = f"{run}:"
os.makedirs(OUT, exist_ok=True)


def generate(path):
    rng = random.Random(7)
    alphabet = "ABCDEFGHJKLMNPQRSTUVWXYZ23456789"
    with open(path, "w") as f:
        f.write("Promo Code,Program Id,Media Id,Type,Credit Rule,Match Mode,Active Start Date,Active End Date,Timezone\n")
        for i in range(EXACT):
            code = "".join(rng.choice(alphabet) for _ in range(8)) + f"{i:07d}"
            program = 1000 + i % 10
            policy = ("ALWAYS", "INVOLVED", "WINNER")[i % 3]
            f.write(f"{code},{program},{20000 + i % 5000},TRACKING,{policy},LI,2026-01-01,,America/New_York\n")
        for i in range(REGEX):
            program = 1000 + i % 10
            # Mostly anchored literal prefixes (the common shape of influencer code families).
            pattern = f"^RX{i:05d}[A-Z0-9]+$" if i % 10 else f"^(?i)fam{i:05d}.*"
            f.write(f"{pattern},{program},{30000 + i % 500},TRACKING,WINNER,RE,,,\n")
        f.write("BENCHTOGGLE,1000,20001,TRACKING,ALWAYS,LI,,,\n")


def codes(*args, check=True):
    env = dict(os.environ, PROMO__STORE__REDIS_URL=REDIS, PROMO__STORE__KEY_PREFIX=prefix)
    started = time.monotonic()
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    done = subprocess.run([BIN, "codes", *args], env=env, capture_output=True, text=True)
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    if check and done.returncode != 0:
        sys.exit(f"codes {args} failed: {done.stderr}")
    return time.monotonic() - started, after.ru_maxrss, (after.ru_utime + after.ru_stime) - (before.ru_utime + before.ru_stime), done


def rss_kib(pid, field):
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith(field + ":"):
                return int(line.split()[1])
    return 0


def log_events(path):
    events = []
    with open(path) as f:
        for line in f:
            try:
                events.append(json.loads(line))
            except ValueError:
                pass
    return events


def pct(values, p):
    values = sorted(values)
    if not values:
        return float("nan")
    k = min(len(values) - 1, max(0, round(p / 100 * (len(values) - 1))))
    return values[k]


table = os.path.join(OUT, "codes-1m.csv")
t0 = time.monotonic()
generate(table)
print(f"generated {EXACT} exact + {REGEX} regex codes in {time.monotonic() - t0:.1f} s ({os.path.getsize(table) / 1e6:.0f} MB)", flush=True)

import_s, import_rss, import_cpu, done = codes("import", table)
print(f"import: {import_s:.2f} s wall, {import_cpu:.2f} s CPU, peak RSS {import_rss / 1024:.0f} MiB: {done.stdout.strip()}", flush=True)
again_s, _, _, done = codes("import", table)
print(f"re-import (no change): {again_s:.2f} s: {done.stdout.strip()}", flush=True)

# Worker cold start.
admin = "127.0.0.1:19465"
log_path = os.path.join(OUT, "worker.log")
topic = f"{run}.orders"
subprocess.run([BIN, "topics", "create", "--brokers", BROKERS, "--partitions", "2", topic, f"{run}.conv", f"{run}.alerts", f"{run}.dlq"], check=True, capture_output=True)
env = dict(os.environ, PROMO__STORE__REDIS_URL=REDIS, PROMO__STORE__KEY_PREFIX=prefix, RUST_LOG="info")
started = time.monotonic()
worker = subprocess.Popen(
    [BIN, "run", "--brokers", BROKERS, "--group", run, "--input-topic", topic, "--transactional-id", f"{run}-0",
     "--admin-listen", admin, "--set", "codes.source=redis", "--set", "worker.log_format=json",
     "--set", f"kafka.conversions_topic={run}.conv", "--set", f"kafka.alerts_topic={run}.alerts",
     "--set", f"kafka.dlq_topic={run}.dlq", "--set", "store.poll_interval_ms=1000"],
    env=env, stderr=open(log_path, "w"), stdout=subprocess.DEVNULL)
loaded_at = None
while time.monotonic() - started < 60:
    if any(e.get("message") == "code table loaded from the store" for e in log_events(log_path)):
        loaded_at = time.monotonic() - started
        break
    time.sleep(0.02)
if loaded_at is None:
    worker.kill()
    sys.exit("the worker did not load the table within 60 s")
load_ms = next(e["millis"] for e in log_events(log_path) if e.get("message") == "code table loaded from the store")
time.sleep(1)
rss_after_load = rss_kib(worker.pid, "VmRSS")
hwm_after_load = rss_kib(worker.pid, "VmHWM")
print(f"cold start: table in force {loaded_at:.2f} s after spawn (load+index {load_ms} ms), RSS {rss_after_load / 1024:.0f} MiB (peak {hwm_after_load / 1024:.0f} MiB)", flush=True)


def propagation_since(count_before):
    events = [e for e in log_events(log_path) if e.get("message") == "code table version in force"]
    return events[count_before:]


def in_force_count():
    return len(propagation_since(0))


# Single-code edits: applied as patches over the shared indexes.
edit_cli = []
before = in_force_count()
for i in range(EDITS):
    verb = "expire" if i % 2 == 0 else "reactivate"
    seconds, _, _, _ = codes(verb, "BENCHTOGGLE")
    edit_cli.append(seconds)
    deadline = time.monotonic() + 30
    while in_force_count() < before + i + 1 and time.monotonic() < deadline:
        time.sleep(0.01)
edits = propagation_since(before)
edit_lat = [e["since_publish_ms"] for e in edits if "since_publish_ms" in e]
patched = sum(1 for e in edits if e.get("patched_rows", 0) > 0)
apply_ms = [e["apply_ms"] for e in edits]

# Bulk changes: a full reload of the table.
extra = os.path.join(OUT, "one-more.csv")
reload_lat, reload_apply = [], []
before = in_force_count()
for i in range(RELOADS):
    with open(extra, "w") as f:
        f.write("Promo Code,Program Id,Media Id,Type,Credit Rule\n")
        f.write(f"BULK{run[-6:]}{i},1000,20001,TRACKING,ALWAYS\n")
    codes("import", extra)
    deadline = time.monotonic() + 60
    while in_force_count() < before + i + 1 and time.monotonic() < deadline:
        time.sleep(0.01)
for e in propagation_since(before):
    if "since_publish_ms" in e:
        reload_lat.append(e["since_publish_ms"])
    reload_apply.append(e["apply_ms"])
rss_end = rss_kib(worker.pid, "VmRSS")
hwm_end = rss_kib(worker.pid, "VmHWM")
worker.terminate()
worker.wait(timeout=60)

# Every version of the run is a full copy of the table (about 80 MB here): remove them all.
# On a cluster (a seed list) every seed is scanned and -c follows the redirections to the
# store's primary (all its keys share one slot).
first = REDIS.split(",")[0]
seeds = [first] + [first.split("://")[0] + "://" + s.strip() for s in REDIS.split(",")[1:]]
removed = 0
for seed in seeds:
    keys = subprocess.run(["redis-cli", "-c", "-u", seed, "--scan", "--pattern", f"{prefix}*"],
                          capture_output=True, text=True, check=True).stdout.split()
    for i in range(0, len(keys), 100):
        subprocess.run(["redis-cli", "-c", "-u", seed, "unlink", *keys[i:i + 100]], capture_output=True, check=True)
    removed += len(keys)
print(f"removed the run's {removed} keys from Redis", flush=True)

print()
print("| measurement | result | target |")
print("|---|---|---|")
print(f"| `codes import`, {EXACT:,} exact + {REGEX:,} regex codes (new table) | {import_s:.1f} s wall, {import_cpu:.1f} s CPU, peak RSS {import_rss / 1024:.0f} MiB | ≤ 15 s |")
print(f"| the same import again (validated, no change, nothing written) | {again_s:.1f} s | |")
print(f"| worker cold start: spawn → table in force | {loaded_at:.2f} s (read + parse + index {load_ms} ms) | ≤ 3 s |")
print(f"| worker resident memory after load / peak | {rss_after_load / 1024:.0f} MiB / {hwm_after_load / 1024:.0f} MiB | reported |")
print(f"| change-to-effect, single-code edit ({len(edit_lat)} edits, {patched} patched) p50 / p99 / max | {pct(edit_lat, 50):.1f} / {pct(edit_lat, 99):.1f} / {max(edit_lat):.1f} ms (apply {pct(apply_ms, 50):.2f} ms p50) | p99 ≤ 50 ms |")
print(f"| change-to-effect, bulk change (full reload, {len(reload_lat)} imports) p50 / max | {pct(reload_lat, 50):.0f} / {max(reload_lat) if reload_lat else float('nan'):.0f} ms (load+index {pct(reload_apply, 50):.0f} ms p50) | |")
print(f"| `codes expire` command, wall (reads, validates, writes the 1 M table) p50 | {statistics.median(edit_cli):.1f} s | |")
print(f"| worker RSS after the reloads / peak | {rss_end / 1024:.0f} MiB / {hwm_end / 1024:.0f} MiB | |")
