"""The promo-attribution job in plain Python, shared by the two peers (Quix Streams and the
hand-tuned confluent-kafka loop), so that they differ only in how they talk to Kafka.

It does what a team writing this job in Python would do for the benchmark's table and orders:
exact codes in a dict keyed by the normalised code, regex codes of the shape ``^(PFX).*`` and
``^PFX[0-9]{2,4}$`` in a dict keyed by their literal prefix (probed at every prefix length the
table has), any other pattern searched one by one, and the same decision and output records as
the Rust worker.

Simplifications, all of which favour the peers (they do less work than the worker):
- codes are assumed ACTIVE, TRACKING and without schedule windows, and partners unlisted
  (active, 30-day window, PREFERRED): the bench table has nothing else, so the validity checks,
  contract checks and credit groups are skipped;
- among several matching regexes the first in table order wins (no priorities) and the
  AMBIGUOUS_CODE_MATCH alert is not raised;
- orders are not validated against the schema and there is no dead-letter topic: a bad record
  raises;
- ``code_table_version`` is a fingerprint of the file sizes, not of their bytes.
"""

import argparse
import csv
import os
import re
import unicodedata
from datetime import datetime, timedelta

import xxhash

CONVERSION_SEED = 0x636F6E76
ALERT_SEED = 0x616C7274
WINDOW = timedelta(days=30)
# Trimmed like the worker's normaliser: whitespace plus NBSP and the zero-width characters.
TRIM = " \t\r\n\u00a0\u200b\u200c\u200d\u2060\ufeff"
PREFIX_RE = re.compile(r"^\^\(([A-Za-z0-9]+)\)\.\*$")
SHAPED_RE = re.compile(r"^\^([A-Za-z0-9]+)\[0-9\]\{(\d+),(\d+)\}\$$")


def job_arguments():
    """The command line both peers share; each adds its own options."""
    parser = argparse.ArgumentParser()
    for name in ("--brokers", "--input", "--out", "--group", "--codes"):
        parser.add_argument(name, required=True)
    parser.add_argument("--delivery", default="exactly-once")
    return parser


class Table:
    """The code table: exact codes by normalised code, regex codes by literal prefix."""

    def __init__(self, codes_path):
        self.exact = {}
        self.prefixed = {}
        self.others = []
        with open(codes_path, newline="", encoding="utf-8") as f:
            for row in csv.DictReader(f):
                entry = (
                    row["Promo Code"],
                    row["Media Id"],
                    row["Credit Rule"],
                    row.get("Deal Id") or None,
                    row.get("Match Mode") == "RE",
                )
                program = row["Program Id"]
                if not entry[4]:
                    self.exact.setdefault((program, normalise(entry[0])), entry)
                    continue
                pattern = entry[0]
                prefix = PREFIX_RE.match(pattern) or SHAPED_RE.match(pattern)
                if prefix:
                    key = (program, prefix.group(1))
                    self.prefixed.setdefault(key, []).append((compile_rust(pattern), entry))
                else:
                    self.others.append((program, compile_rust(pattern), entry))
        self.prefix_lengths = sorted({len(p) for _, p in self.prefixed})
        size = os.path.getsize(codes_path)
        self.version = f"file-{size:016x}"

    def lookup(self, program, entered):
        """The entry a code as entered matches, or None."""
        trimmed = entered.strip(TRIM)
        hit = self.exact.get((program, normalise(trimmed)))
        if hit is not None:
            return hit
        for length in self.prefix_lengths:
            if length > len(trimmed):
                break
            candidates = self.prefixed.get((program, trimmed[:length]))
            if candidates:
                for pattern, entry in candidates:
                    if pattern.search(trimmed):
                        return entry
        for other_program, pattern, entry in self.others:
            if other_program == program and pattern.search(trimmed):
                return entry
        return None


def compile_rust(pattern):
    # Rust's regex takes `(?i)` anywhere; Python only at the start.
    if "(?i)" in pattern:
        return re.compile(pattern.replace("(?i)", ""), re.IGNORECASE)
    return re.compile(pattern)


def normalise(code):
    # NFKC only matters for non-ASCII input; skipping it for ASCII is what a tuned Python job does.
    if not code.isascii():
        code = unicodedata.normalize("NFKC", code)
    return code.upper()


def code_id(entry):
    return ("RE:" if entry[4] else "LI:") + (entry[0] if entry[4] else normalise(entry[0]))


def alert_id(*parts):
    material = b"".join(len(p.encode()).to_bytes(8, "little") + p.encode() for p in parts)
    return xxhash.xxh3_128_hexdigest(material, seed=ALERT_SEED)


def parse_time(value):
    return datetime.fromisoformat(value)


def decide(record, order, table):
    """The conversion and the alerts for one order (``record`` is its exact input bytes)."""
    program = order["program_id"]
    event_time = parse_time(order["event_time"])
    winner = None
    involved = set()
    for tp in order.get("touchpoints") or ():
        if tp.get("kind", "click") != "click":
            continue
        ts = parse_time(tp["ts"])
        if ts > event_time or event_time - ts > WINDOW:
            continue
        involved.add(tp["partner_id"])
        # Latest click wins; an equal time goes to the one listed last.
        if winner is None or ts >= winner[0]:
            winner = (ts, tp)
    winner_id = winner[1]["partner_id"] if winner else None

    matched = []
    unknown = []
    for entered in order.get("promo_codes") or ():
        entry = table.lookup(program, entered)
        if entry is None:
            unknown.append(entered)
        else:
            matched.append((entered, entry))

    chosen = None
    for m in matched:
        if m[1][2] == "ALWAYS":
            chosen = m
            break
    if chosen is None and winner_id is not None:
        chosen = next((m for m in matched if m[1][1] == winner_id), None)
    if chosen is None and matched:
        chosen = matched[0]

    status, basis, partner, invalid_reason, invalid_partner, overridden = (
        "UNATTRIBUTED", None, None, None, None, None)
    foreign = False
    if chosen is not None:
        owner, policy = chosen[1][1], chosen[1][2]
        if policy == "ALWAYS":
            status, basis, partner = "CREDITED", "CODE_ALWAYS", owner
            if winner_id is not None and winner_id != owner:
                overridden = winner_id
        elif policy == "INVOLVED" and owner in involved:
            status, basis, partner = "CREDITED", "CODE_INVOLVED", owner
        elif policy == "WINNER" and winner_id == owner:
            status, basis, partner = "CREDITED", "CODE_WINNER", owner
        elif winner_id is not None:
            foreign = True
            status, invalid_reason, invalid_partner = (
                "INVALID", "CODE_OWNED_BY_OTHER_PARTNER", winner_id)
        else:
            status, invalid_partner = "INVALID", owner
            invalid_reason = ("CODE_OWNER_NOT_INVOLVED" if policy == "INVOLVED"
                              else "CODE_OWNER_NOT_WINNER")
    elif winner_id is not None:
        status, basis, partner = "CREDITED", "CLICK", winner_id

    code = None
    if chosen is not None:
        entry = chosen[1]
        code = {
            "entered": chosen[0],
            "code_id": code_id(entry),
            "match_type": "REGEX" if entry[4] else "EXACT",
            "owner_partner_id": entry[1],
            "credit_policy": entry[2],
            "deal_id": entry[3],
        }
    winning_click = None
    if winner is not None:
        tp = winner[1]
        winning_click = {
            "partner_id": tp["partner_id"],
            "click_id": tp.get("click_id"),
            "ts": tp["ts"],
            "credit_group": "PREFERRED",
        }
    conversion = {
        "schema_version": 1,
        "event_id": xxhash.xxh3_128_hexdigest(record, seed=CONVERSION_SEED),
        "order_id": order["order_id"],
        "program_id": program,
        "event_type": order["event_type"],
        "event_time": order["event_time"],
        "status": status,
        "basis": basis,
        "partner_id": partner,
        "invalid_reason": invalid_reason,
        "invalid_partner_id": invalid_partner,
        "overridden_partner_id": overridden,
        "code": code,
        "winning_click": winning_click,
        "involved_partners": sorted(involved),
        "unknown_codes": unknown,
        "code_table_version": table.version,
    }

    alerts = []
    owners = sorted({m[1][1] for m in matched})
    if len(owners) >= 2:
        alerts.append(_alert(order, table, "MULTIPLE_PARTNER_CODES", "low", chosen, None,
                             {"owners": owners, "code_ids": [code_id(m[1]) for m in matched]}))
    if foreign:
        alerts.append(_alert(order, table, "CODE_USED_BY_UNAUTHORIZED_PARTNER", "high", chosen,
                             winner_id, {"credit_policy": chosen[1][2],
                                         "foreign_code": "invalidate",
                                         "conversion_status": status}))
    return conversion, alerts


def _alert(order, table, kind, severity, matched, other, detail):
    cid = code_id(matched[1]) if matched else ""
    return {
        "schema_version": 1,
        "alert_id": alert_id(kind, order["program_id"], order["event_type"], order["order_id"], cid),
        "kind": kind,
        "severity": severity,
        "program_id": order["program_id"],
        "order_ids": [order["order_id"]],
        "code_id": cid or None,
        "code": matched[0] if matched else None,
        "owner_partner_id": matched[1][1] if matched else None,
        "other_partner_id": other,
        "event_time": order["event_time"],
        "code_table_version": table.version,
        "count": 1,
        "detail": detail,
    }
