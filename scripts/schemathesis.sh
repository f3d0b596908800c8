#!/usr/bin/env bash
# Runs schemathesis (a pinned version from PyPI) with the given arguments, from a virtualenv
# made once and reused (the contract test of the HTTP API, tests/it/api.rs, calls this). The
# venv lives outside the work tree, under ~/.cache, so every checkout and worktree shares it;
# `scripts/test.sh` prepares it before the tests run.
set -euo pipefail

VERSION=4.32.5
venv="${MAILINTAKE_SCHEMATHESIS_VENV:-${XDG_CACHE_HOME:-$HOME/.cache}/mailintake/schemathesis-$VERSION}"

installed() { "$venv/bin/schemathesis" --version 2>/dev/null | grep -qF "version $VERSION"; }

if ! installed; then
    mkdir -p "$(dirname "$venv")"
    # One installer at a time; whoever waited finds it installed.
    exec 9>"$venv.lock"
    flock 9
    if ! installed; then
        rm -rf "$venv"
        python3 -m venv "$venv"
        "$venv/bin/pip" install --quiet "schemathesis==$VERSION"
    fi
    flock -u 9
fi
exec "$venv/bin/schemathesis" "$@"
