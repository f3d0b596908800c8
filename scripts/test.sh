#!/usr/bin/env bash
# Runs mailintake's whole test suite on a fresh Debian/Ubuntu machine: installs the build and
# mail-stack packages it needs, starts the local mail stack (Dovecot, Postfix, fake Entra ID on
# loopback), makes sure PostgreSQL answers on 127.0.0.1:5432, then runs every test, the
# integration tests against those real servers included. Nothing is skipped: a missing server
# fails the run.
set -euo pipefail
cd "$(dirname "$0")/.."

log() { printf '\n==> %s\n' "$*"; }

need_packages=()
# chromium: the status-page test (tests/it/ops.rs) renders the page in headless Chromium.
# python3-venv: the HTTP API's contract test runs schemathesis from PyPI in a venv.
for pkg in pkg-config libssl-dev chromium python3-venv; do
    dpkg-query -W -f='${Status}' "$pkg" 2>/dev/null | grep -q "install ok installed" || need_packages+=("$pkg")
done
if ((${#need_packages[@]})); then
    log "installing ${need_packages[*]}"
    apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${need_packages[@]}"
fi

log "starting the local mail stack"
scripts/mailstack.sh up

log "checking PostgreSQL on 127.0.0.1:5432"
pg_ready() { (exec 3<>/dev/tcp/127.0.0.1/5432) 2>/dev/null; }
if ! pg_ready; then
    if command -v pg_ctlcluster >/dev/null && [ -d /etc/postgresql ]; then
        for version in /etc/postgresql/*; do
            pg_ctlcluster --skip-systemctl-redirect "$(basename "$version")" main start || true
        done
    fi
    for _ in $(seq 1 30); do pg_ready && break; sleep 1; done
fi
if ! pg_ready; then
    if ! command -v pg_ctlcluster >/dev/null; then
        log "installing PostgreSQL"
        apt-get update -qq
        DEBIAN_FRONTEND=noninteractive apt-get install -y -qq postgresql
        pg_ctlcluster --skip-systemctl-redirect "$(ls /etc/postgresql | head -n1)" main start
        for _ in $(seq 1 30); do pg_ready && break; sleep 1; done
    fi
fi
pg_ready || { echo "PostgreSQL does not answer on 127.0.0.1:5432; the PostgreSQL tests need it" >&2; exit 1; }

log "preparing schemathesis for the HTTP API's contract test (a venv made once, then reused)"
scripts/schemathesis.sh --version

log "running the tests"
if cargo nextest --version >/dev/null 2>&1; then
    cargo nextest run --workspace --no-fail-fast --failure-output final
else
    cargo test --workspace --no-fail-fast
fi
