#!/usr/bin/env python3
"""phases.py -- where the wall time of a `mailintake once` run goes, from its log.

    BENCH_RUST_LOG='warn,mailintake=info,sqlx::query=debug' scripts/bench.sh --only sqlite --keep ...
    scripts/bench/phases.py /tmp/mailintake-bench-<pid>/sqlite.log

Every SQL statement is logged by sqlx with its elapsed time, so a batch reads as:
  recorded_outcomes SELECT | (IMAP UID FETCH of the batch) | per message: parse + SQL | (COMMIT,
  IMAP STORE/MOVE: not logged) | UPDATE ... disposed_at per row + COMMIT
Prints the totals of: IMAP fetch, SQL inside the batch transaction, the rest of the record loop
(parse, decide, hashing, logging, task hand-offs), COMMIT, IMAP disposition, mark-disposed; and the
slowest statements by total time (a 40 ms cluster means Nagle + delayed ACK).
"""

import collections
import re
import sys
from datetime import datetime

ANSI = re.compile(r"\x1b\[[0-9;]*m")
LINE = re.compile(r"^(\S+Z)\s+(\w+)\s+(.*)$")


def ts(s):
    return datetime.fromisoformat(s.replace("Z", "+00:00")).timestamp()


def main(path):
    events = []
    for raw in open(path, encoding="utf-8", errors="replace"):
        line = ANSI.sub("", raw.rstrip("\n"))
        m = LINE.match(line)
        if not m:
            continue
        t = ts(m.group(1))
        rest = m.group(3)
        if "sqlx::query" in rest:
            s = re.search(r'summary="([^"]*)"', rest)
            e = re.search(r"elapsed_secs=([\d.e-]+)", rest)
            if s and e:
                el = float(e.group(1))
                # sqlx logs when the statement finished: it started `elapsed` earlier.
                events.append(("sql", t - el, t, s.group(1)))
        else:
            events.append(("log", t, t, rest[:80]))
    if not events:
        sys.exit("no timestamped lines (run with BENCH_RUST_LOG='warn,mailintake=info,sqlx::query=debug')")

    phase = collections.Counter()
    stmt_total = collections.Counter()
    stmt_count = collections.Counter()
    stmt_over_30ms = collections.Counter()
    state = "start"
    prev_end = events[0][1]
    batches = 0
    for kind, start, end, text in events:
        gap = max(0.0, start - prev_end)
        if kind == "sql":
            stmt_total[text] += end - start
            stmt_count[text] += 1
            if end - start > 0.03:
                stmt_over_30ms[text] += 1
            if text.startswith("SELECT id, uid, outcome"):
                phase["(between batches)"] += gap
                phase["SQL outside the batch"] += end - start
                state = "fetch"
                batches += 1
            elif state == "fetch":
                phase["IMAP fetch of the batch (+ first parse)"] += gap
                phase["SQL in the batch transaction"] += end - start
                state = "record"
            elif state == "record" and text.startswith("UPDATE imap_messages SET disposed_at"):
                # sqlx does not log COMMIT: the gap holds the batch's COMMIT (fsync) and the
                # IMAP disposition.
                phase["COMMIT of the batch + IMAP disposition"] += gap
                phase["mark disposed (SQL + COMMIT)"] += end - start
                state = "marking"
            elif state == "record" and text.startswith("COMMIT"):
                phase["record loop outside SQL (parse, decide, hash, log, hand-offs)"] += gap
                phase["COMMIT of the batch"] += end - start
                state = "dispose"
            elif state == "record":
                phase["record loop outside SQL (parse, decide, hash, log, hand-offs)"] += gap
                phase["SQL in the batch transaction"] += end - start
            elif state == "dispose":
                phase["IMAP disposition (STORE \\Seen / MOVE)"] += gap
                phase["mark disposed (SQL + COMMIT)"] += end - start
                state = "marking"
            elif state == "marking":
                phase["mark disposed (SQL + COMMIT)"] += gap + (end - start)
            else:
                phase["start-up (token, login, migrations, listing)"] += gap + (end - start)
        else:
            if state == "record":
                phase["record loop outside SQL (parse, decide, hash, log, hand-offs)"] += gap
            elif state == "fetch":
                phase["IMAP fetch of the batch (+ first parse)"] += gap
            else:
                phase["start-up, listing and the rest"] += gap
        prev_end = max(prev_end, end)
    wall = events[-1][2] - events[0][1]
    print(f"{path}: {wall:.2f} s from the first to the last log line, {batches} batches")
    for k, v in phase.most_common():
        print(f"  {v:8.2f} s  {100 * v / wall:5.1f} %  {k}")
    print("  slowest statements (total s, count, mean ms, count > 30 ms):")
    for k, v in stmt_total.most_common(10):
        print(f"  {v:8.2f} s {stmt_count[k]:7d} {1000 * v / stmt_count[k]:8.3f} ms {stmt_over_30ms[k]:6d}  {k}")
    print(f"  statements: {sum(stmt_count.values())}")


if __name__ == "__main__":
    for p in sys.argv[1:]:
        main(p)
