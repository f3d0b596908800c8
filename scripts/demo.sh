#!/usr/bin/env bash
# The quickstart: brings up the local mail stack (Dovecot + Postfix + fake Entra ID on loopback),
# seeds sample customer emails into support@helpdesk.test, builds mailintake, runs it once against
# that mailbox with the embedded SQLite database, and lists the tickets it made.
set -euo pipefail
cd "$(dirname "$0")/.."

log() { printf '\n==> %s\n' "$*"; }

for pkg in pkg-config libssl-dev; do
    if ! dpkg-query -W -f='${Status}' "$pkg" 2>/dev/null | grep -q "install ok installed"; then
        apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq pkg-config libssl-dev
        break
    fi
done

log "starting the local mail stack"
scripts/mailstack.sh up
# shellcheck disable=SC1090
. <(scripts/mailstack.sh env)

log "seeding sample emails into support@helpdesk.test"
scripts/mailstack.sh seed support@helpdesk.test 5

log "building mailintake"
cargo build --release --quiet --bin mailintake

# The demo config points mailintake at the stack: the fake Entra's tenant and demo app (secret
# from the environment, as in production), Dovecot's IMAPS port and the stack's CA.
demo_dir="$MAILSTACK_DIR/demo"
mkdir -p "$demo_dir"
cat >"$demo_dir/mailintake.toml" <<TOML
[database]
url = "sqlite://data/demo/mailintake.db"

[identities.demo]
flow = "client_credentials"
tenant = "$MAILSTACK_TENANT_ID"
client_id = "3f7e2c1a-9d4b-4e8f-a6c5-0b1d2e3f4a5b"
client_secret = { env = "DEMO_CLIENT_SECRET" }
authority = "$MAILSTACK_ENTRA_URL/{tenant}"

[[mailboxes]]
name = "support"
address = "support@helpdesk.test"
identity = "demo"
dispose = "move"
processed_folder = "Processed"

[mailboxes.imap]
host = "localhost"
port = $MAILSTACK_IMAPS_PORT
tls = "implicit"
ca_file = "$MAILSTACK_CA"
TOML

export DEMO_CLIENT_SECRET=demo-secret-value
log "mailintake once"
target/release/mailintake --config "$demo_dir/mailintake.toml" once

log "mailintake tickets"
target/release/mailintake --config "$demo_dir/mailintake.toml" tickets
