#!/usr/bin/env bash
# The ingest benchmark (issue 7): mailintake vs the bare pipeline (the floor, examples/bare_pipeline.rs)
# vs mbsync vs a plain Python ingester on the same generated helpdesk inbox, figures printed and
# written into BENCHMARKS.md.
#
#   scripts/bench.sh [--count N] [--seed S] [--with-50k] [--no-report] [--keep] [--only bare,sqlite,postgres,graph,mbsync,python]
#   scripts/bench.sh --latency [--count 200] [--rate 5] [--no-report] [--keep]
#   scripts/bench.sh --mailboxes N [--identities 10] [--deliveries 200] [--fleet-mailboxes 60]
#                    [--fleet-messages 50] [--workers 1,2,3] [--skip-one] [--skip-fleet] [--no-report] [--keep]
#
# --latency runs the latency benchmark instead (scripts/bench/latency.py): `mailintake run` with
# IDLE, 200 messages submitted over SMTP, time to the committed ticket and to the acknowledgement.
# --mailboxes N runs the many-mailboxes benchmark (scripts/bench/mailboxes.py): N mailboxes in one
# `mailintake run` (SQLite, IDLE: peak RSS, time to IDLE, token requests, delivery latency, status
# page and /metrics latency, SIGTERM), then a backfill by 1, 2 and 3 workers on PostgreSQL.
#
# As root on Debian 12 (it installs isync and time, and uses the local mail stack and the
# PostgreSQL on 127.0.0.1:5432 that scripts/test.sh uses). Not part of the test suite. It creates
# only its own mailboxes (bench-<pid>-*@helpdesk.test), its own fake-entra on a free loopback port,
# its own database (mailintake_bench_<pid>) and work dir, and removes them all when it ends.
# The load generator alone: scripts/bench/loadgen.py --help.
set -euo pipefail
cd "$(dirname "$0")/.."

latency=0
mailboxes=""
if [[ "${1:-}" == "--latency" ]]; then
    latency=1
    shift
elif [[ "${1:-}" == "--mailboxes" ]]; then
    mailboxes="${2:?--mailboxes needs a count}"
    shift 2
fi

log() { printf '\n==> %s\n' "$*" >&2; }

need=()
for pkg in pkg-config libssl-dev; do
    dpkg-query -W -f='${Status}' "$pkg" 2>/dev/null | grep -q "install ok installed" || need+=("$pkg")
done
command -v mbsync >/dev/null || need+=(isync)
[[ -x /usr/bin/time ]] || need+=(time)
command -v psql >/dev/null || need+=(postgresql-client)
if ((${#need[@]})); then
    log "installing ${need[*]}"
    apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${need[@]}" >/dev/null
fi

log "local mail stack"
scripts/mailstack.sh up
[[ -x target/debug/fake-entra ]] || cargo build -q -p fake-entra --bin fake-entra

if ((!latency)) && ! (exec 3<>/dev/tcp/127.0.0.1/5432) 2>/dev/null; then
    echo "bench: PostgreSQL does not answer on 127.0.0.1:5432 (scripts/test.sh starts it)" >&2
    exit 1
fi

if [[ -n $mailboxes ]]; then
    log "building mailintake (release)"
    cargo build --release --quiet --bin mailintake
else
    log "building mailintake and the bare pipeline (release)"
    cargo build --release --quiet --bin mailintake --example bare_pipeline
    cargo build --release --quiet -p fake-graph --bin fake-graph
fi

log "benchmark (load average $(cut -d' ' -f1-3 /proc/loadavg))"
if ((latency)); then
    exec python3 scripts/bench/latency.py "$@"
fi
if [[ -n $mailboxes ]]; then
    exec python3 scripts/bench/mailboxes.py --mailboxes "$mailboxes" "$@"
fi
exec python3 scripts/bench/run.py "$@"
