"""The promo-attribution job as a Quix Streams application, written the way its documentation
shows: one StreamingDataFrame, the library's JSON serialisers, branches to two output topics,
library defaults for everything the job does not need to change except the commit interval. Runs until SIGTERM/SIGINT.

    python quix_worker.py --brokers B --input T --out PREFIX --group G --codes codes.csv
                          [--delivery exactly-once|at-least-once]

The input is read as bytes and parsed in the job, because the conversion's event_id hashes the
exact input record; Quix's "json" deserialiser would parse it with the same json module.
"""

import json
import tempfile

from quixstreams import Application

from attribution import Table, decide, job_arguments


def main():
    parser = job_arguments()
    parser.add_argument("--commit-interval", type=float, default=1.0)
    parser.add_argument("--state-dir", default=None)
    parser.add_argument("--loglevel", default="WARNING")
    args = parser.parse_args()

    table = Table(args.codes)
    app = Application(
        broker_address=args.brokers,
        consumer_group=args.group,
        auto_offset_reset="earliest",
        processing_guarantee=args.delivery,
        # The library's default is 5 s. One checkpoint (a transaction, in exactly-once mode) per
        # second still amortises the commit over 10x more records than the worker's 100 ms
        # batches do, and lets a drain of a few seconds see several commits.
        commit_interval=args.commit_interval,
        # The local broker's first group join waits half the session timeout.
        consumer_extra_config={"session.timeout.ms": 6000, "heartbeat.interval.ms": 500},
        loglevel=args.loglevel,
        # Unused (the job is stateless), but Quix creates it; keep it out of the source tree.
        state_dir=args.state_dir or tempfile.mkdtemp(prefix="quix-state-"),
        # The suite creates every topic itself, with the same partitions for every contender.
        auto_create_topics=False,
        use_changelog_topics=False,
    )
    orders = app.topic(args.input, value_deserializer="bytes")
    conversions = app.topic(f"{args.out}.conversions", key_serializer="str")
    alerts = app.topic(f"{args.out}.alerts", key_serializer="str")

    sdf = app.dataframe(orders)
    sdf = sdf.apply(lambda record: decide(record, json.loads(record), table))
    sdf.apply(lambda decided: decided[0]).to_topic(conversions, key=lambda c: c["order_id"])
    sdf.apply(lambda decided: decided[1], expand=True).to_topic(
        alerts, key=lambda a: a["alert_id"])
    app.run()


if __name__ == "__main__":
    main()
