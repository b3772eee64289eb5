"""Turns one suite run (results.json from benches/throughput.rs, criterion's estimates) into the
results section of BENCHMARKS.md and a chart. Run by scripts/bench; prints the section.

    python bench/report.py --results DIR/results.json [--micro criterion|recorded]
        [--criterion target/criterion] [--tansu-version V] [--commit C]
        [--chart PNG] [--json COPY] [--write BENCHMARKS.md]
"""

import argparse
import importlib.metadata
import json
import os
import re
import shutil
import subprocess
from pathlib import Path

BEGIN, END = "<!-- suite:begin -->", "<!-- suite:end -->"
SECTION = "## Suite (issue 6)"

# The micro numbers the suite reports, by criterion id, with their targets (ns per element).
MICRO = [
    ("exact_lookup/hit", "Exact lookup, hit, warm", 60),
    ("exact_lookup/miss", "Exact lookup, miss, warm", 60),
    ("cold_lookup/exact_hit", "Exact lookup, hit, cold", None),
    ("regex_lookup/hit", "Regex-path lookup, hit, warm", 150),
    ("regex_lookup/miss", "Regex-path lookup, near miss", 150),
    ("pipeline/parse_decide_serialize", "Per order: parse + decide + serialize", 1500),
    ("pipeline/value_baseline", "Per order: naive serde_json::Value baseline", None),
]
# Each contender's CPU per order against the worker's in the same mode: the ratio key in
# results.json (worker CPU per order / that contender's).
CPU_RATIOS = {
    "passthrough exactly-once": "worker_cpu_over_passthrough_eos",
    "passthrough at-least-once": "worker_cpu_over_passthrough_alo",
    "confluent-kafka loop exactly-once": "worker_cpu_over_confluent_eos",
    "confluent-kafka loop at-least-once": "worker_cpu_over_confluent_alo",
    "Quix Streams exactly-once": "worker_cpu_over_quix_eos",
    "Quix Streams at-least-once": "worker_cpu_over_quix_alo",
}
# How each drain's CPU was measured (the "cpu_source" of a drain).
CPU_SOURCES = {
    "process": "its process tree",
    "threads": "its threads in the bench process",
    "bench process": "the bench process",
}
LIVE_NAMES = {
    "eos": "worker, exactly-once",
    "alo": "worker, at-least-once",
    "patched-eos": "patched worker, exactly-once",
    "confluent-eos": "confluent-kafka loop, exactly-once",
}

# The last numbers BENCHMARKS.md recorded (09:20 UTC run, "Now" column), used when criterion
# is not run, so the table is complete but says where each number comes from.
RECORDED = {
    "exact_lookup/hit": 223,
    "exact_lookup/miss": 182,
    "cold_lookup/exact_hit": 451,
    "regex_lookup/hit": 322,
    "regex_lookup/miss": 185,
    "pipeline/parse_decide_serialize": 3950,
    "pipeline/value_baseline": 4270,
}


def criterion_ns(root, bench_id):
    """ns per element of one criterion benchmark, or None when it has not been run."""
    base = Path(root) / bench_id / "new"
    try:
        estimates = json.loads((base / "estimates.json").read_text())
        info = json.loads((base / "benchmark.json").read_text())
    except (OSError, ValueError):
        return None
    point = (estimates.get("slope") or estimates["mean"])["point_estimate"]
    elements = (info.get("throughput") or {}).get("Elements") or 1
    return point / elements


def machine():
    model = "unknown"
    with open("/proc/cpuinfo") as f:
        for line in f:
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    with open("/proc/meminfo") as f:
        mem_kb = int(next(l for l in f if l.startswith("MemTotal")).split()[1])
    return f"{os.cpu_count()} CPUs, {model}, {mem_kb / 1024 / 1024:.0f} GiB"


def versions(results, tansu):
    def command(*argv):
        try:
            return subprocess.run(argv, capture_output=True, text=True).stdout.strip()
        except OSError:
            return "unknown"

    import confluent_kafka

    libs = ", ".join(f"{name} {importlib.metadata.version(name)}"
                     for name in ("quixstreams", "confluent-kafka", "orjson"))
    return (f"{command('rustc', '-V')}; {tansu} (memory storage); librdkafka "
            f"{results['librdkafka']} (worker, passthrough) and {confluent_kafka.libversion()[0]} "
            f"(Python peers); Python {command('python3.11', '-V').split()[-1]}: {libs}")


def fmt(value, digits=0):
    if value is None or value != value:
        return "—"
    return f"{value:,.{digits}f}"


def verdict(value, target, higher_is_better=True):
    if value is None or value != value or value == 0:
        return "not measured"
    ok = value >= target if higher_is_better else value <= target
    return "**yes**" if ok else "**no**"


def store_table(log_path):
    """The results table scripts/bench-store printed, or None when it did not run."""
    try:
        lines = Path(log_path).read_text().splitlines()
    except (OSError, TypeError):
        return None
    start = next((i for i, l in enumerate(lines) if l.startswith("| measurement |")), None)
    if start is None:
        return None
    table = []
    for line in lines[start:]:
        if not line.startswith("|"):
            break
        table.append(line)
    return table


def render(results, micro_source, criterion_root, tansu, commit, chart_link, store=None,
           patch_name="none"):
    drains = {d["name"]: d for d in results["drains"]}
    live = {l["mode"]: l for l in results["live"]}
    ratios = results["ratios"]
    lines = [
        f"Kafka part run {results['started_at'][:16].replace('T', ' ')}–"
        f"{results['finished_at'][11:16]} UTC (code store and criterion right after), "
        f"commit `{commit}`, {machine()}, load average {results['load_before']} before and "
        f"{results['load_after']} after (other engineers build and test on this machine).",
        "",
        f"Versions: {versions(results, tansu)}.",
        "",
        f"Corpus: {results['orders']:,} orders of {results['mean_order_bytes']:.0f} bytes on average "
        f"(60% exact hits, 20% regex hits, 20% unknown, 1–3 codes, 0–3 touchpoints) against "
        f"{results['table']['exact']:,} exact + {results['table']['regex']:,} regex codes, 3 "
        f"partitions; batches of {results['batch']['max_records']} records / "
        f"{results['batch']['max_ms']} ms for the worker, the passthrough and the hand-tuned loop. "
        f"The Python peers drain the same backlog for at most {results['peer_secs']} s each"
        + (f", the worker with detectors on for at most {results['detector_secs']} s."
           if "detector_secs" in results else "."),
        "",
        f"![suite chart]({chart_link})",
        "",
        "| Target | Wanted | Measured | Met? |",
        "|---|---|---|---|",
    ]
    p99_50 = next((l["p99_ms"] for l in live.get("eos", {}).get("latency", [])
                   if abs(l["load"] - 0.5) < 1e-6), None)
    rows = [
        ("worker / passthrough, exactly-once (drain; passthrough waits like the worker, "
         "rust-rdkafka flush)", "≥ 0.9", ratios["worker_over_passthrough_eos"], 0.9, True, 2),
        ("worker / passthrough, exactly-once (drain; passthrough polls 1 ms until flushed: "
         "the real limit)", "≥ 0.9", ratios.get("worker_over_spin_passthrough_eos"), 0.9, True, 2),
        ("worker / Quix Streams, exactly-once (drain)", "≥ 10×",
         ratios["worker_over_quix_eos"], 10, True, 1),
        ("worker / hand-tuned confluent-kafka loop, exactly-once (drain)", "≥ 5×",
         ratios["worker_over_confluent_eos"], 5, True, 1),
        ("p99 end-to-end latency at 50% of the sustainable rate, exactly-once", "≤ 50 ms",
         p99_50, 50, False, 0),
        ("worker CPU per order / Quix Streams CPU per order, exactly-once (drain)", "≤ 0.1",
         ratios.get("worker_cpu_over_quix_eos"), 0.1, False, 2),
        ("worker CPU per order / confluent-kafka loop CPU per order, exactly-once (drain)",
         "≤ 0.3", ratios.get("worker_cpu_over_confluent_eos"), 0.3, False, 2),
        ("detectors on / off, worker exactly-once (drain rate; detectors cost ≤ 15%)", "≥ 0.85",
         ratios.get("detectors_on_over_off_eos"), 0.85, True, 2),
    ]
    for name, wanted, value, target, higher, digits in rows:
        lines.append(f"| {name} | {wanted} | {fmt(value, digits)} | "
                     f"{verdict(value, target, higher)} |")
    patched_p99 = next((l["p99_ms"] for l in live.get("patched-eos", {}).get("latency", [])
                        if abs(l["load"] - 0.5) < 1e-6), None)
    if ratios.get("patched_worker_over_spin_passthrough_eos"):
        for name, key, target, digits in (
                ("passthrough (1 ms poll)", "patched_worker_over_spin_passthrough_eos", 0.9, 2),
                ("Quix Streams", "patched_worker_over_quix_eos", 10, 1),
                ("confluent-kafka loop", "patched_worker_over_confluent_eos", 5, 1)):
            lines.append(f"| *patched* worker (`{patch_name}`) / {name}, exactly-once (drain) | "
                         f"{'≥ ' + str(target)} | {fmt(ratios[key], digits)} | "
                         f"{verdict(ratios[key], target)} |")
        lines.append(f"| *patched* worker: p99 at 50% of its sustainable rate, exactly-once | "
                     f"≤ 50 ms | {fmt(patched_p99)} | {verdict(patched_p99, 50, False)} |")
    lines.append(f"| worker / passthrough, exactly-once, batches of 10,000 / 500 ms | — | "
                 f"{fmt(ratios.get('worker_over_passthrough_eos_big_batch'), 2)} | — |")
    lines.append(f"| worker / passthrough, at-least-once (drain; library flush / 1 ms poll) | — | "
                 f"{fmt(ratios['worker_over_passthrough_alo'], 2)} / "
                 f"{fmt(ratios.get('worker_over_spin_passthrough_alo'), 2)} | — |")
    lines.append(f"| worker / Quix Streams, at-least-once | — | "
                 f"{fmt(ratios['worker_over_quix_alo'], 1)} | — |")
    lines.append(f"| worker / confluent-kafka loop, at-least-once | — | "
                 f"{fmt(ratios['worker_over_confluent_alo'], 1)} | — |")
    for key, label in (("worker_cpu_over_quix_alo", "Quix Streams, at-least-once"),
                       ("worker_cpu_over_confluent_alo", "confluent-kafka loop, at-least-once"),
                       ("worker_cpu_over_passthrough_eos", "passthrough, exactly-once"),
                       ("worker_cpu_over_passthrough_alo", "passthrough, at-least-once")):
        lines.append(f"| worker CPU per order / {label} | — | {fmt(ratios.get(key), 2)} | — |")
    lines.append(f"| detectors on / off, CPU per order (worker + Redis on / worker off) | — | "
                 f"{fmt(ratios.get('detectors_cpu_on_over_off_eos'), 2)} | — |")
    micro_rows = []
    for bench_id, label, target in MICRO:
        measured = criterion_ns(criterion_root, bench_id) if micro_source == "criterion" else None
        source = "criterion, this run"
        if measured is None:
            measured = RECORDED.get(bench_id)
            source = "recorded 09:20 UTC (not re-run)"
        micro_rows.append((label, target, measured, source))
        if target is not None:
            lines.append(f"| {label} | ≤ {target:,} ns | {fmt(measured)} ns ({source}) | "
                         f"{verdict(measured, target, False)} |")

    lines += [
        "",
        "**Backlog drain.** Every contender drains the same topic with its own consumer group "
        "and output topics; rate = records committed between the group's first and last "
        "committed-offset advance / that time (group join, table load and start-up excluded). "
        "CPU: see the next table; peak RSS = the contender's VmHWM (table load included; not "
        "shown for the passthrough, which runs in the bench process). The detectors pair drains "
        "a second backlog of the same orders with customer, email, device and IP fields added "
        "(5,000 customers, 4,000 devices, 3,000 IPs), once with the detectors off and once on, "
        "state in the run's private Redis. Conversions written = records in the contender's "
        "conversions topic "
        "afterwards (high watermarks): one per order it got through before it was stopped, timed "
        "or not, plus, in exactly-once mode, one commit marker per partition per transaction.",
        "",
        "| Contender | Records/s | Records timed | s | Contender CPU-s / M | Broker CPU-s / M | Peak RSS MB | Worker's mean batch / commit ms | Conversions written |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for d in results["drains"]:
        if d["error"]:
            lines.append(f"| {d['name']} | failed: {d['error']} | | | | | | | |")
            continue
        batch = (f"{d['mean_batch']:,.0f} / {d['mean_commit_ms']:.0f}"
                 if d.get("mean_batch") is not None else "")
        lines.append(
            f"| {d['name']} | {fmt(d['rate'])} | {d['records']:,} | {fmt(d['seconds'], 2)} | "
            f"{fmt(d['cpu_s_per_m'], 1)} | {fmt(d['broker_cpu_s_per_m'], 1)} | "
            f"{fmt(d['peak_rss_mb'])} | {batch} | {fmt(d.get('conversions_written'))} |")

    lines += [
        "",
        "**CPU per million orders.** utime+stime over the timed window of the drain, from /proc: "
        "for a contender in its own process (worker, Python peers), that process and its "
        "descendants (`/proc/<pid>/stat`, all threads); for the passthrough, which runs in the "
        "bench process, the threads that appeared when it started (its own and its clients' "
        "librdkafka threads, `/proc/self/task/<tid>/stat`), so the offset probe is not counted; "
        "for the broker-only rows, the whole bench process (it does nothing else meanwhile). "
        "Broker and Redis columns are those processes over the same window; Redis only where the "
        "detectors use it. Worker ÷ this = the worker's CPU per order (its fastest drain in the "
        "same mode) ÷ this contender's: the issue's targets are ≤ 0.1 against Quix Streams and "
        "≤ 0.3 against the hand-tuned loop, exactly-once.",
        "",
        "| Contender | Measured from | Contender CPU-s / M | Broker CPU-s / M | Redis CPU-s / M | Worker ÷ this |",
        "|---|---|---|---|---|---|",
    ]
    for d in results["drains"]:
        if d["error"]:
            continue
        ratio = ratios.get(CPU_RATIOS.get(d["name"], ""))
        lines.append(
            f"| {d['name']} | {CPU_SOURCES.get(d.get('cpu_source'), 'its process')} | "
            f"{fmt(d['cpu_s_per_m'], 1)} | {fmt(d['broker_cpu_s_per_m'], 1)} | "
            f"{fmt(d.get('redis_cpu_s_per_m'), 1)} | {fmt(ratio, 2)} |")

    lines += [
        "",
        "**Live (worker binary; the confluent-kafka loop exactly-once).** An open-loop generator (linger 5 ms) sends at a fixed rate on a "
        "fresh topic; a step *holds* when the lag (sent − committed offsets) at its end is at most "
        "half a second of input and grew by at most a tenth of a second of input over the step's "
        "second half. The sustainable rate is the highest rate that held (start at 0.8× the drain "
        "rate, ×1.15 up after a hold, halfway back after a miss, 5 steps). Latency = the "
        "time a `read_committed` reader receives the conversion − the send time carried in the "
        "order id, at 10%, 50% and 80% of the sustainable rate. The confluent-kafka loop's "
        "sustainable rate is found exactly as the worker's, from its own drain rate. "
        + ("The latency steps run on the run's broker restarted after the rate search, with "
           "fresh topics and a fresh contender (tansu's commits slow down as transactions "
           "accumulate; Kafka's do not)."
           if any(l.get("latency_on_fresh_broker") for l in live.values())
           else "The latency steps run on the broker and topic of the rate search."),
        "",
        "| Mode | Sustainable orders/s | Steps (rate: lag at half time → end; ✗ = not held) | Load | Rate | Samples | p50 ms | p99 ms | p99.9 ms | Worker's mean batch / commit ms |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for mode, name in LIVE_NAMES.items():
        if mode == "patched-eos":
            name += f" (`{patch_name}`)"
        l = live.get(mode)
        if not l:
            continue
        steps = "; ".join(
            f"{s['rate']:,.0f}: "
            + (f"{s['lag_at_half']:,} → " if s.get("lag_at_half") is not None else "")
            + f"{s['lag_at_end']:,}{'' if s['held'] else ' ✗'}" for s in l["steps"])
        first = True
        for lat in l["latency"] or [None]:
            head = (f"| {name} | {fmt(l['sustainable_rate'])} | {steps} " if first
                    else "| | | ")
            first = False
            if lat is None:
                lines.append(head + "| — | — | — | — | — | — | — |")
                continue
            backlog = lat.get("lag_at_start") or 0
            note = f" (backlog {backlog:,} at start)" if backlog > lat["rate"] * 0.5 else ""
            lines.append(head + f"| {lat['load']:.0%} | {fmt(lat['rate'])} | "
                         f"{lat['samples']:,} of {lat['expected']:,}{note} | {fmt(lat['p50_ms'], 1)} | "
                         f"{fmt(lat['p99_ms'], 1)} | {fmt(lat['p999_ms'], 1)} | "
                         f"{fmt(lat.get('mean_batch'))} / {fmt(lat.get('mean_commit_ms'), 1)} |")

    lines += latency_side_by_side(live.get("eos"), live.get("confluent-eos"))
    lines += ["", "**Micro (criterion, no Kafka).**", "",
              "| Benchmark | ns per lookup / order | Source |", "|---|---|---|"]
    for label, _, measured, source in micro_rows:
        lines.append(f"| {label} | {fmt(measured)} | {source} |")
    if store:
        lines += ["", "**Code store** (`scripts/bench-store`, run by the suite on the same private "
                  "Redis and broker, with fewer edits and reloads than its own default; method in "
                  "the \"Code store\" section).", ""] + store
    else:
        lines += ["", "Code store (import, cold start, change-to-effect): not run in this suite "
                  "run; see the \"Code store\" section."]
    lines += [
              "", f"Topics: created per run with unique names on a private tansu started for the "
              f"run and stopped after it; deleted at the end: "
              f"{'yes' if results.get('topics_deleted') else 'no (' + str(results.get('topics_delete_error', 'not attempted')) + ')'}."]
    return "\n".join(lines)


def latency_side_by_side(worker, loop):
    """The worker's and the confluent-kafka loop's exactly-once latency, load by load."""
    if not worker or not loop:
        return ["", "Latency of the confluent-kafka loop beside the worker: not measured in this "
                "run."]
    lines = [
        "",
        f"**Latency side by side, exactly-once.** Each at 10%, 50% and 80% of its *own* "
        f"sustainable rate (worker {fmt(worker['sustainable_rate'])}/s, confluent-kafka loop "
        f"{fmt(loop['sustainable_rate'])}/s), both found by the same step search from 0.8× the "
        f"contender's drain rate; same generator, same reader.",
        "",
        "| Load | Worker orders/s | Worker p50 / p99 / p99.9 ms | Loop orders/s | "
        "Loop p50 / p99 / p99.9 ms |",
        "|---|---|---|---|---|",
    ]

    def cell(point):
        if point is None:
            return "— | —"
        return (f"{fmt(point['rate'])} | {fmt(point['p50_ms'], 1)} / {fmt(point['p99_ms'], 1)} / "
                f"{fmt(point['p999_ms'], 1)}")

    for load in (0.1, 0.5, 0.8):
        at = [next((p for p in side["latency"] if abs(p["load"] - load) < 1e-6), None)
              for side in (worker, loop)]
        lines.append(f"| {load:.0%} | {cell(at[0])} | {cell(at[1])} |")
    return lines


def chart(results, path):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.ticker import FuncFormatter, NullFormatter

    drains = [d for d in results["drains"] if not d["error"] and "(perf)" not in d["name"]]
    fig = plt.figure(figsize=(15, 10))
    grid = fig.add_gridspec(2, 2, height_ratios=[3, 2])
    left, middle = fig.add_subplot(grid[0, 0]), fig.add_subplot(grid[0, 1])
    right = fig.add_subplot(grid[1, :])
    names = [d["name"] for d in drains]
    colours = [colour(n) for n in names]
    rates = [d["rate"] for d in drains]
    left.barh(names, rates, color=colours)
    left.set_xscale("log")
    left.xaxis.set_major_formatter(FuncFormatter(lambda v, _: f"{v:,.0f}"))
    left.xaxis.set_minor_formatter(NullFormatter())
    left.invert_yaxis()
    left.set_xlabel("records/s (log scale)")
    left.set_title("Backlog drain (same broker, same run)")
    for y, rate in enumerate(rates):
        left.text(rate, y, f" {rate:,.0f}", va="center", fontsize=8)

    contenders = [d for d in drains if not d["name"].startswith("broker")]
    cpu = [d["cpu_s_per_m"] + (d.get("redis_cpu_s_per_m") or 0) for d in contenders]
    middle.barh([d["name"] for d in contenders], cpu,
                color=[colour(d["name"]) for d in contenders])
    middle.invert_yaxis()
    middle.set_xlabel("CPU-s per million orders (+ Redis with detectors)")
    middle.set_title("CPU per order")
    for y, value in enumerate(cpu):
        middle.text(value, y, f" {value:.1f}", va="center", fontsize=8)

    loads = None
    for l in results["live"]:
        lat = l["latency"]
        if not lat:
            continue
        loads = [p["load"] * 100 for p in lat]
        label = LIVE_NAMES.get(l["mode"], l["mode"])
        line_colour = {"eos": "#dd8452", "alo": "#4c72b0", "patched-eos": "#8172b3",
                       "confluent-eos": "#55a868"}.get(l["mode"], "#333333")
        for key, style, name in (("p50_ms", ":", "p50"), ("p99_ms", "-", "p99"),
                                 ("p999_ms", "--", "p99.9")):
            right.plot(loads, [p[key] for p in lat], style, marker="o", color=line_colour,
                       label=f"{label} {name} (sustainable {l['sustainable_rate']:,.0f}/s)"
                       if name == "p99" else f"{label} {name}")
    if loads:
        right.set_xticks(loads, [f"{x:.0f}%" for x in loads])
    right.set_yscale("log")
    right.yaxis.set_major_formatter(FuncFormatter(lambda v, _: f"{v:,.0f}"))
    right.axhline(50, color="red", linewidth=0.8)
    right.text(right.get_xlim()[0], 55, " p99 target 50 ms", color="red", fontsize=8)
    right.set_ylabel("end-to-end ms (produced → conversion readable)")
    right.set_xlabel("load, share of the sustainable rate")
    right.set_title("Latency: worker and confluent-kafka loop")
    right.legend(fontsize=8, loc="upper left")
    fig.suptitle(f"promo-attribution benchmark suite, {results['started_at'][:16].replace('T', ' ')} UTC")
    fig.tight_layout()
    fig.savefig(path, dpi=100)


def colour(name):
    """Bar colour of a contender in the chart."""
    for prefix, value in (("broker", "#888888"), ("passthrough", "#4c72b0"),
                          ("worker", "#dd8452"), ("patched", "#8172b3"),
                          ("detectors", "#c44e52")):
        if name.startswith(prefix):
            return value
    return "#55a868"


def write_section(path, body, chart_link):
    text = Path(path).read_text()
    block = f"{BEGIN}\n{body}\n{END}"
    if BEGIN in text and END in text:
        text = re.sub(re.escape(BEGIN) + ".*?" + re.escape(END), lambda _: block, text,
                      flags=re.S)
    else:
        text = (text.rstrip("\n") + f"\n\n{SECTION}\n\nOne command: `scripts/bench` (see its "
                f"header for options). Generated by it:\n\n{block}\n")
    Path(path).write_text(text)


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--results", required=True)
    parser.add_argument("--micro", default="recorded")
    parser.add_argument("--criterion", default="target/criterion")
    parser.add_argument("--tansu-version", default="tansu")
    parser.add_argument("--commit", default="unknown")
    parser.add_argument("--chart", required=True)
    parser.add_argument("--json")
    parser.add_argument("--store-log")
    parser.add_argument("--patch-name", default="none")
    parser.add_argument("--write")
    args = parser.parse_args()
    results = json.loads(Path(args.results).read_text())
    chart_path = Path(args.chart)
    chart_path.parent.mkdir(parents=True, exist_ok=True)
    chart(results, chart_path)
    link = os.path.relpath(chart_path, Path(args.write).parent) if args.write else str(chart_path)
    body = render(results, args.micro, args.criterion, args.tansu_version, args.commit, link,
                  store_table(args.store_log), args.patch_name)
    if args.json:
        shutil.copyfile(args.results, args.json)
    if args.write:
        write_section(args.write, body, link)
    print(body)


if __name__ == "__main__":
    main()
