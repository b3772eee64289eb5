#!/usr/bin/env bash
# A/B of two worker binaries with bench/experiments/latency_probe.py, each variant on a freshly
# started private broker and Redis (tansu slows as transactions pile up, so a shared broker would
# favour whichever ran first). Diagnostic, not part of the suite.
# usage: bench/experiments/probe_ab.sh RATE SECONDS BIN_A BIN_B [ROUNDS]   (needs bench/.venv)
set -u
cd "$(dirname "$0")/../.."
rate=$1; secs=$2; a=$3; b=$4; rounds=${5:-2}
export PROMO_KAFKA_PORT=19392 PROMO_REDIS_PORT=19393 PROMO_SERVICES_DIR=/tmp/lat-services
brokers=127.0.0.1:19392
for r in $(seq 1 "$rounds"); do
  for v in A B; do
    bin=$a; [ $v = B ] && bin=$b
    scripts/services down >/dev/null 2>&1
    scripts/services up >/dev/null 2>&1 || { echo "services failed"; exit 1; }
    $bin topics create --brokers $brokers orders promo.conversions promo.alerts promo.dlq >/dev/null
    $bin run --brokers $brokers --group ab-$r-$v --transactional-id ab-$r-$v --delivery exactly-once \
      --codes samples/codes.csv --partners samples/partners.csv --admin-listen 127.0.0.1:19395 \
      > /tmp/ab-worker.log 2>&1 &
    wpid=$!
    ready=0
    for i in $(seq 1 300); do curl -sf 127.0.0.1:19395/readyz >/dev/null && { ready=1; break; }; sleep 0.2; done
    if [ "$ready" -ne 1 ]; then
        # A probe against a worker that never became ready would report the broker, not the worker.
        echo "worker $bin not ready within 60 s; its log:" >&2; tail -20 /tmp/ab-worker.log >&2
        kill $wpid 2>/dev/null; scripts/services down >/dev/null 2>&1; exit 1
    fi
    echo "== round $r variant $v ($bin) rate $rate"
    bench/.venv/bin/python bench/experiments/latency_probe.py $brokers orders promo.conversions \
      "$rate" "$secs" 127.0.0.1:19395 2>&1 | grep -v "^%"
    kill $wpid; wait $wpid 2>/dev/null
  done
done
scripts/services down >/dev/null 2>&1
