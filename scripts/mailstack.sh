#!/usr/bin/env bash
# mailstack.sh -- a dev/test mail stack of real servers on loopback for mailintake.
#
#   scripts/mailstack.sh up            install (Debian 12), configure and start everything; idempotent
#   scripts/mailstack.sh down [--purge] stop what this script started (by pid files); --purge deletes the state dir
#   scripts/mailstack.sh status        what runs on which port; exit 1 if anything is down
#   scripts/mailstack.sh env           print the env file (KEY=VALUE lines) that tests read
#   scripts/mailstack.sh stop|start|restart dovecot|postfix|opendkim|entra
#                                      one component only (fault drills on a private stack)
#   scripts/mailstack.sh seed [ADDRESS] [COUNT]
#                                      deliver COUNT (5) sample mails to ADDRESS (support@helpdesk.test) via LMTP
#
# Components, all on loopback only (127.0.0.1; IMAPS listeners also on 127.0.0.2 and 127.0.0.3):
#   fake-entra (crates/fake-entra)  HTTP   MAILSTACK_ENTRA_PORT       (14080)  token + /_fake/tokeninfo
#   Dovecot 2.3                     IMAP   MAILSTACK_IMAP_PORT        (14143)  STARTTLS
#                                   IMAPS  MAILSTACK_IMAPS_PORT       (14993)  implicit TLS
#                                          (also on 127.0.0.2, advertising no MOVE, and on
#                                          127.0.0.3, answering a FETCH of a message it cannot read
#                                          with a tagged NO instead of ending the session)
#                                   LMTP   MAILSTACK_LMTP_PORT        (14024)  for tests to deliver mail directly
#   Postfix 3.7                     SMTP   MAILSTACK_SUBMISSION_PORT  (14587)  STARTTLS required before AUTH
#                                   SMTPS  MAILSTACK_SUBMISSIONS_PORT (14465)  implicit TLS
#                                   SMTP   MAILSTACK_MX_PORT          (14025)  inbound, like a domain's MX:
#                                          no AUTH, mail for the local domains only (no relay),
#                                          through OpenDKIM
#   OpenDKIM 2.11                   milter MAILSTACK_MILTER_PORT      (14891)  for the MX only
# Every address in every domain is a mailbox (Maildir under $MAILSTACK_DIR/mail/<domain>/<local>).
# Logins: XOAUTH2/OAUTHBEARER with a fake-entra token, or PLAIN/LOGIN with $MAILSTACK_PLAIN_PASSWORD.
# Mail submitted for a domain other than helpdesk.test, customer.test, example.com, example.org
# lands in sink@customer.test, except bounce.test, whose mail Postfix bounces (a real DSN back to
# the sender); nothing is ever sent off the machine.
#
# The MX stamps what it checked the way a receiving server does (RFC 8601): OpenDKIM, in verify
# mode, inserts `Authentication-Results: mx.mailstack.test; dkim=...` above every header the
# sender wrote (dkim=none for unsigned mail) and removes the sender's copies that claim that id.
# Public keys come from OpenDKIM's TestPublicKeys file, not DNS: `up` makes one RSA key for
# customer.test (selector `mailstack`) whose private half tests sign with (MAILSTACK_DKIM_KEY,
# e.g. python3-dkim's dkimsign). SPF is not checked: it needs the sender's DNS and a real client
# address, and this machine has neither (mail delivered over LMTP carries no stamp at all).
#
# Settings (environment): MAILSTACK_DIR (state dir, default ${TMPDIR:-/tmp}/mailintake-mailstack)
# and the MAILSTACK_*_PORT variables above.
set -euo pipefail

SCRIPT_DIR=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
REPO_ROOT=$(cd "$SCRIPT_DIR/.." && pwd)
TEMPLATES=$SCRIPT_DIR/mailstack

DIR=${MAILSTACK_DIR:-${TMPDIR:-/tmp}/mailintake-mailstack}
IMAP_PORT=${MAILSTACK_IMAP_PORT:-14143}
IMAPS_PORT=${MAILSTACK_IMAPS_PORT:-14993}
SUBMISSION_PORT=${MAILSTACK_SUBMISSION_PORT:-14587}
SUBMISSIONS_PORT=${MAILSTACK_SUBMISSIONS_PORT:-14465}
LMTP_PORT=${MAILSTACK_LMTP_PORT:-14024}
ENTRA_PORT=${MAILSTACK_ENTRA_PORT:-14080}
MX_PORT=${MAILSTACK_MX_PORT:-14025}
MILTER_PORT=${MAILSTACK_MILTER_PORT:-14891}

PLAIN_PASSWORD=mailstack-plain-password
TENANT_ID=8c3a1f52-4b7e-4d0a-9a43-1f0e6c2d7b10
VMAIL_USER=mailstack
# The authserv-id of the MX's Authentication-Results, and the domain and selector of the DKIM
# key tests sign with.
AUTHSERV_ID=mx.mailstack.test
DKIM_DOMAIN=customer.test
DKIM_SELECTOR=mailstack
# python3-dkim: its dkimsign is the tests' DKIM signer, independent of OpenDKIM.
PACKAGES=(dovecot-core dovecot-imapd dovecot-lmtpd postfix openssl python3 opendkim python3-dkim)
START_TIMEOUT=30

log() { printf 'mailstack: %s\n' "$*" >&2; }
die() { printf 'mailstack: error: %s\n' "$*" >&2; exit 1; }

usage() {
  sed -n '2,11p' "${BASH_SOURCE[0]}" | sed 's/^# \{0,1\}//'
}

# Makes the state dir absolute (it is written into config files) and checks the settings.
check_settings() {
  case $DIR in
    /*) ;;
    *) DIR=$PWD/$DIR ;;
  esac
  DIR=${DIR%/}
  # The path goes unquoted into Dovecot and Postfix configuration files, and Dovecot's and
  # Postfix's unix sockets live below it (sun_path holds 107 bytes).
  [[ $DIR =~ ^[A-Za-z0-9._/+-]+$ ]] ||
    die "MAILSTACK_DIR='$DIR' may only contain letters, digits and . _ / + - (it goes into config files)"
  ((${#DIR} <= 72)) || die "MAILSTACK_DIR='$DIR' is too long for unix socket paths (at most 72 characters)"
  local port
  for port in "$IMAP_PORT" "$IMAPS_PORT" "$SUBMISSION_PORT" "$SUBMISSIONS_PORT" "$LMTP_PORT" "$ENTRA_PORT" \
    "$MX_PORT" "$MILTER_PORT"; do
    if ! [[ $port =~ ^[0-9]+$ ]] || ((port < 1 || port > 65535)); then
      die "invalid port '$port' in MAILSTACK_*_PORT"
    fi
  done
}

# Paths inside the state dir.
set_paths() {
  TLS_DIR=$DIR/tls
  ENTRA_DIR=$DIR/entra
  DOVECOT_DIR=$DIR/dovecot
  DOVECOT_CONF=$DOVECOT_DIR/dovecot.conf
  DOVECOT_PID=$DOVECOT_DIR/run/master.pid
  POSTFIX_DIR=$DIR/postfix
  POSTFIX_ETC=$POSTFIX_DIR/etc
  POSTFIX_QUEUE=$POSTFIX_DIR/queue
  POSTFIX_PID=$POSTFIX_QUEUE/pid/master.pid
  ENTRA_PID=$ENTRA_DIR/fake-entra.pid
  ENTRA_LOG=$ENTRA_DIR/fake-entra.log
  ENTRA_KEY=$ENTRA_DIR/signing-key.pem
  ENTRA_CONF=$ENTRA_DIR/fake-entra.toml
  ENTRA_BIN=${CARGO_TARGET_DIR:-$REPO_ROOT/target}/debug/fake-entra
  OPENDKIM_DIR=$DIR/opendkim
  OPENDKIM_CONF=$OPENDKIM_DIR/opendkim.conf
  OPENDKIM_PID=$OPENDKIM_DIR/run/opendkim.pid
  OPENDKIM_LOG=$OPENDKIM_DIR/opendkim.log
  DKIM_KEY=$OPENDKIM_DIR/$DKIM_SELECTOR.$DKIM_DOMAIN.key
  DKIM_PUBLIC_KEYS=$OPENDKIM_DIR/test-public-keys
  MAIL_DIR=$DIR/mail
  ENV_FILE=$DIR/env
}

# ---------------------------------------------------------------------------------------------
# Process and port helpers

# Reads the first number in a pid file (Postfix pads its pid with spaces).
read_pid() {
  local f=$1 pid
  [[ -r $f ]] || return 1
  pid=$(tr -dc '0-9\n' <"$f" | head -n1)
  [[ -n $pid ]] || return 1
  printf '%s\n' "$pid"
}

# True when the pid file names a live process whose command line contains $2
# (guards against a stale pid file whose pid was reused by something else).
pid_alive() {
  local f=$1 want=$2 pid
  pid=$(read_pid "$f") || return 1
  [[ -r /proc/$pid/cmdline ]] || return 1
  tr '\0' ' ' <"/proc/$pid/cmdline" | grep -q -- "$want"
}

# True when something listens on 127.0.0.1:PORT (ss, so probes leave no noise in the daemons'
# logs; falls back to connecting).
port_open() {
  if command -v ss >/dev/null 2>&1; then
    [[ -n $(ss -Hltn "src 127.0.0.1 and sport = :$1" 2>/dev/null) ]]
    return
  fi
  # shellcheck disable=SC2016 # $1 is expanded by the inner bash
  timeout 2 bash -c 'exec 3<>"/dev/tcp/127.0.0.1/$1"' _ "$1" 2>/dev/null
}

# Waits until all given ports accept connections; on timeout shows the log and fails.
wait_ports() {
  local what=$1 logfile=$2; shift 2
  local deadline=$((SECONDS + START_TIMEOUT)) port pending
  while :; do
    pending=()
    for port in "$@"; do
      port_open "$port" || pending+=("$port")
    done
    ((${#pending[@]} == 0)) && return 0
    if ((SECONDS >= deadline)); then
      log "$what did not open port(s) ${pending[*]} within ${START_TIMEOUT}s; last lines of $logfile:"
      tail -n 30 "$logfile" >&2 2>/dev/null || true
      exit 1
    fi
    sleep 0.2
  done
}

# Sends SIGTERM to the pid in the pid file (if it is the expected program) and waits for it.
stop_pid() {
  local name=$1 f=$2 want=$3 pid i
  if ! pid_alive "$f" "$want"; then
    rm -f "$f"
    return 0
  fi
  pid=$(read_pid "$f")
  log "stopping $name (pid $pid)"
  kill -TERM "$pid" 2>/dev/null || true
  for ((i = 0; i < 100; i++)); do
    kill -0 "$pid" 2>/dev/null || break
    sleep 0.1
  done
  if kill -0 "$pid" 2>/dev/null; then
    log "$name (pid $pid) did not stop in 10 s; sending SIGKILL"
    kill -KILL "$pid" 2>/dev/null || true
  fi
  rm -f "$f"
}

# ---------------------------------------------------------------------------------------------
# up: packages, certificates, configuration, daemons

check_os() {
  local id='' version=''
  if [[ -r /etc/os-release ]]; then
    # shellcheck disable=SC1091
    id=$(. /etc/os-release && printf '%s' "${ID:-}")
    # shellcheck disable=SC1091
    version=$(. /etc/os-release && printf '%s' "${VERSION_ID:-}")
  fi
  if [[ $id != debian || $version != 12 ]]; then
    die "mailstack.sh is written for Debian 12 (bookworm): it installs Debian's Dovecot 2.3 and Postfix 3.7 packages and uses their config syntax. This system is '${id:-unknown} ${version:-?}'. Run it in a Debian 12 container or VM (e.g. docker run -it debian:12)."
  fi
  [[ $(id -u) -eq 0 ]] || die "'up' must run as root (it installs packages and starts Dovecot and Postfix, which switch users)"
}

install_packages() {
  local missing=() p created_policy=0
  for p in "${PACKAGES[@]}"; do
    dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q 'install ok installed' || missing+=("$p")
  done
  ((${#missing[@]} == 0)) && return 0
  log "installing ${missing[*]}"
  # Keep the packages' own daemons from starting on the standard ports.
  if [[ ! -e /usr/sbin/policy-rc.d ]]; then
    printf '#!/bin/sh\n# created by mailintake scripts/mailstack.sh during apt-get install\nexit 101\n' >/usr/sbin/policy-rc.d
    chmod 755 /usr/sbin/policy-rc.d
    created_policy=1
    trap 'rm -f /usr/sbin/policy-rc.d' EXIT
  fi
  echo 'postfix postfix/main_mailer_type select No configuration' | debconf-set-selections
  local rc=0
  {
    DEBIAN_FRONTEND=noninteractive apt-get update -qq &&
      DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${missing[@]}"
  } >"${TMPDIR:-/tmp}/mailstack-apt.log" 2>&1 || rc=$?
  if ((created_policy)); then
    rm -f /usr/sbin/policy-rc.d
    trap - EXIT
  fi
  if ((rc != 0)); then
    tail -n 30 "${TMPDIR:-/tmp}/mailstack-apt.log" >&2
    die "apt-get install failed (full log: ${TMPDIR:-/tmp}/mailstack-apt.log)"
  fi
  # If a policy-rc.d that allowed starting was already there (e.g. a systemd host), the packages
  # started their default instances: stop them, they would sit on ports 143/993/25.
  if command -v systemctl >/dev/null 2>&1 && [[ -d /run/systemd/system ]]; then
    for p in dovecot postfix opendkim; do
      if systemctl is-active --quiet "$p" 2>/dev/null; then
        log "stopping and disabling the distribution's default $p service"
        systemctl disable --now "$p" >/dev/null 2>&1 || true
      fi
    done
  fi
}

ensure_vmail_user() {
  if ! getent passwd "$VMAIL_USER" >/dev/null; then
    log "creating system user $VMAIL_USER (owner of all test mailboxes)"
    useradd --system --user-group --no-create-home --home-dir /nonexistent \
      --shell /usr/sbin/nologin --comment 'mailintake mailstack virtual mail' "$VMAIL_USER"
  fi
  VMAIL_UID=$(id -u "$VMAIL_USER")
  VMAIL_GROUP=$(id -gn "$VMAIL_USER")
}

make_dirs() {
  mkdir -p "$DIR"
  chmod 755 "$DIR"
  mkdir -p "$TLS_DIR" "$ENTRA_DIR" "$DOVECOT_DIR/state" "$POSTFIX_ETC" "$POSTFIX_DIR/data" "$POSTFIX_QUEUE" "$MAIL_DIR"
  chmod 700 "$TLS_DIR" "$ENTRA_DIR"
  chmod 755 "$DOVECOT_DIR" "$POSTFIX_DIR" "$POSTFIX_ETC" "$POSTFIX_QUEUE"
  chown "$VMAIL_USER:$VMAIL_GROUP" "$MAIL_DIR"
  chmod 750 "$MAIL_DIR"
  chown postfix:postfix "$POSTFIX_DIR/data"
  chmod 700 "$POSTFIX_DIR/data"
  # OpenDKIM runs as its package's user: it writes its pid file into run/ and reads the public
  # keys; the private key stays root's (tests sign as root, like they read the Entra key).
  mkdir -p "$OPENDKIM_DIR/run"
  chmod 755 "$OPENDKIM_DIR"
  chown opendkim:opendkim "$OPENDKIM_DIR/run"
  chmod 750 "$OPENDKIM_DIR/run"
  # Dovecot delivers as $VMAIL_USER and Postfix runs as postfix: both must reach the state dir
  # (a private TMPDIR such as a 0700 directory would lock them out).
  local u
  for u in "$VMAIL_USER" postfix; do
    runuser -u "$u" -- test -x "$DIR/." ||
      die "user $u cannot reach $DIR (a parent directory is not world-searchable); set MAILSTACK_DIR to a path under a world-searchable directory such as /tmp"
  done
}

make_certs() {
  # Certificates from before the 127.0.0.3 listener existed lack that name: make new ones.
  if [[ -s $TLS_DIR/ca.pem && -s $TLS_DIR/server.pem && -s $TLS_DIR/server.key ]]; then
    openssl x509 -in "$TLS_DIR/server.pem" -noout -text | grep -q 'IP Address:127.0.0.3' && return 0
  fi
  log "generating a test CA and a server certificate for localhost/127.0.0.1/127.0.0.2/127.0.0.3 in $TLS_DIR"
  local tmp
  tmp=$(mktemp -d "$TLS_DIR/.gen.XXXXXX")
  (
    cd "$tmp"
    openssl req -x509 -newkey rsa:2048 -nodes -sha256 -days 3650 \
      -keyout ca.key -out ca.pem -subj '/O=mailintake mailstack/CN=mailintake mailstack test CA' \
      -addext 'basicConstraints=critical,CA:TRUE' -addext 'keyUsage=critical,keyCertSign,cRLSign'
    openssl req -newkey rsa:2048 -nodes -sha256 -keyout server.key -out server.csr \
      -subj '/O=mailintake mailstack/CN=localhost'
    printf '%s\n' 'basicConstraints=critical,CA:FALSE' \
      'keyUsage=critical,digitalSignature,keyEncipherment' \
      'extendedKeyUsage=serverAuth' \
      'subjectAltName=DNS:localhost,IP:127.0.0.1,IP:127.0.0.2,IP:127.0.0.3' >server.ext
    openssl x509 -req -sha256 -days 825 -in server.csr -CA ca.pem -CAkey ca.key \
      -CAcreateserial -extfile server.ext -out server.pem
    chmod 600 ca.key server.key
    chmod 644 ca.pem server.pem
  ) >"$tmp.log" 2>&1 || { cat "$tmp.log" >&2; die "certificate generation failed"; }
  mv "$tmp"/ca.key "$tmp"/ca.pem "$tmp"/server.key "$tmp"/server.pem "$TLS_DIR"/
  rm -rf "$tmp" "$tmp.log"
}

# Copies a template to its destination, replacing @NAME@ placeholders. Prints "changed" if the
# destination's content changed (so the caller knows to restart the daemon that reads it).
render() {
  local src=$1 dst=$2 tmp
  tmp=$(mktemp "$dst.XXXXXX")
  local esc_dir=${DIR//\\/\\\\}
  esc_dir=${esc_dir//|/\\|}
  esc_dir=${esc_dir//&/\\&}
  sed -e "s|@DIR@|$esc_dir|g" \
    -e "s|@IMAP_PORT@|$IMAP_PORT|g" -e "s|@IMAPS_PORT@|$IMAPS_PORT|g" \
    -e "s|@SUBMISSION_PORT@|$SUBMISSION_PORT|g" -e "s|@SUBMISSIONS_PORT@|$SUBMISSIONS_PORT|g" \
    -e "s|@LMTP_PORT@|$LMTP_PORT|g" -e "s|@ENTRA_PORT@|$ENTRA_PORT|g" \
    -e "s|@MX_PORT@|$MX_PORT|g" -e "s|@MILTER_PORT@|$MILTER_PORT|g" -e "s|@AUTHSERV_ID@|$AUTHSERV_ID|g" \
    -e "s|@PLAIN_PASSWORD@|$PLAIN_PASSWORD|g" \
    -e "s|@VMAIL_USER@|$VMAIL_USER|g" -e "s|@VMAIL_GROUP@|$VMAIL_GROUP|g" -e "s|@VMAIL_UID@|$VMAIL_UID|g" \
    "$src" >"$tmp"
  chmod 644 "$tmp"
  if [[ -f $dst ]] && cmp -s "$tmp" "$dst"; then
    rm -f "$tmp"
  else
    mv -f "$tmp" "$dst"
    echo changed
  fi
}

# --- fake Entra ID ---------------------------------------------------------------------------

entra_healthy() {
  pid_alive "$ENTRA_PID" "$ENTRA_CONF" && port_open "$ENTRA_PORT"
}

start_entra() {
  if [[ ! -s $ENTRA_KEY ]]; then
    log "generating the fake Entra signing key"
    openssl genpkey -algorithm RSA -pkeyopt rsa_keygen_bits:2048 -out "$ENTRA_KEY.tmp" 2>/dev/null
    chmod 600 "$ENTRA_KEY.tmp"
    mv "$ENTRA_KEY.tmp" "$ENTRA_KEY"
  fi
  local example=$REPO_ROOT/crates/fake-entra/fake-entra.example.toml
  [[ -f $example ]] || die "missing $example (the fake-entra crate provides it)"
  local changed=''
  if ! cmp -s "$example" "$ENTRA_CONF"; then
    cp "$example" "$ENTRA_CONF"
    changed=changed
  fi
  # cargo waits for the build directory lock while another build (say, `cargo test`) runs: skip
  # it when the binary is newer than the crate's sources and Cargo.lock.
  if [[ -x $ENTRA_BIN && ! $REPO_ROOT/Cargo.lock -nt $ENTRA_BIN &&
    -z $(find "$REPO_ROOT/crates/fake-entra" -type f -newer "$ENTRA_BIN" -print -quit) ]]; then
    :
  else
    command -v cargo >/dev/null 2>&1 || die "cargo not found in PATH (needed to build fake-entra)"
    log "building fake-entra (cargo build -p fake-entra)"
    (cd "$REPO_ROOT" && cargo build -q -p fake-entra --bin fake-entra) || die "cargo build -p fake-entra failed"
  fi
  [[ -x $ENTRA_BIN ]] || die "cargo build did not produce $ENTRA_BIN"
  # Restart when the binary or its config is newer than the running process.
  if pid_alive "$ENTRA_PID" "$ENTRA_CONF"; then
    if [[ -z $changed && ! $ENTRA_BIN -nt $ENTRA_PID ]]; then
      return 0
    fi
    stop_pid fake-entra "$ENTRA_PID" "$ENTRA_CONF"
  fi
  log "starting fake-entra on 127.0.0.1:$ENTRA_PORT"
  setsid "$ENTRA_BIN" --listen "127.0.0.1:$ENTRA_PORT" --key "$ENTRA_KEY" --config "$ENTRA_CONF" \
    </dev/null >>"$ENTRA_LOG" 2>&1 &
  echo $! >"$ENTRA_PID"
  disown || true
}

# --- Dovecot ---------------------------------------------------------------------------------

dovecot_healthy() {
  pid_alive "$DOVECOT_PID" "$DOVECOT_CONF" && port_open "$IMAP_PORT" && port_open "$IMAPS_PORT" && port_open "$LMTP_PORT"
}

start_dovecot() {
  local changed=''
  changed+=$(render "$TEMPLATES/dovecot.conf.in" "$DOVECOT_CONF")
  changed+=$(render "$TEMPLATES/dovecot-oauth2.conf.ext.in" "$DOVECOT_DIR/dovecot-oauth2.conf.ext")
  if pid_alive "$DOVECOT_PID" "$DOVECOT_CONF"; then
    [[ -z $changed ]] && return 0
    log "Dovecot configuration changed; restarting Dovecot"
    stop_pid Dovecot "$DOVECOT_PID" "$DOVECOT_CONF"
  fi
  doveconf -c "$DOVECOT_CONF" >/dev/null 2>"$DOVECOT_DIR/doveconf.err" ||
    { cat "$DOVECOT_DIR/doveconf.err" >&2; die "Dovecot rejects $DOVECOT_CONF"; }
  log "starting Dovecot (IMAP $IMAP_PORT, IMAPS $IMAPS_PORT, LMTP $LMTP_PORT)"
  dovecot -c "$DOVECOT_CONF" </dev/null >>"$DOVECOT_DIR/dovecot.log" 2>&1 ||
    { tail -n 30 "$DOVECOT_DIR/dovecot.log" >&2; die "dovecot failed to start"; }
}

# --- OpenDKIM --------------------------------------------------------------------------------

# The RSA key tests sign customer.test's mail with, made once; its public half goes into the
# TestPublicKeys file on every `up`, as the TXT record `<selector>._domainkey.<domain>` would hold it.
make_dkim_key() {
  if [[ ! -s $DKIM_KEY ]]; then
    log "generating the DKIM key of $DKIM_DOMAIN (selector $DKIM_SELECTOR)"
    openssl genpkey -algorithm RSA -pkeyopt rsa_keygen_bits:2048 -out "$DKIM_KEY.tmp" 2>/dev/null
    chmod 600 "$DKIM_KEY.tmp"
    mv "$DKIM_KEY.tmp" "$DKIM_KEY"
  fi
  local public tmp
  # p= is the base64 of the DER SubjectPublicKeyInfo, on one line (the file is read line by line).
  public=$(openssl pkey -in "$DKIM_KEY" -pubout -outform DER 2>/dev/null | base64 -w0)
  [[ -n $public ]] || die "cannot read the public half of $DKIM_KEY"
  tmp=$(mktemp "$DKIM_PUBLIC_KEYS.XXXXXX")
  {
    echo "# Written by mailstack.sh up: the keys OpenDKIM verifies with instead of DNS (TestPublicKeys)."
    printf '%s._domainkey.%s v=DKIM1; k=rsa; p=%s\n' "$DKIM_SELECTOR" "$DKIM_DOMAIN" "$public"
  } >"$tmp"
  chmod 644 "$tmp"
  mv -f "$tmp" "$DKIM_PUBLIC_KEYS"
}

opendkim_healthy() {
  pid_alive "$OPENDKIM_PID" "$OPENDKIM_CONF" && port_open "$MILTER_PORT"
}

start_opendkim() {
  local changed=''
  changed+=$(render "$TEMPLATES/opendkim.conf.in" "$OPENDKIM_CONF")
  if pid_alive "$OPENDKIM_PID" "$OPENDKIM_CONF"; then
    [[ -z $changed ]] && return 0
    log "OpenDKIM configuration changed; restarting OpenDKIM"
    stop_pid OpenDKIM "$OPENDKIM_PID" "$OPENDKIM_CONF"
  fi
  # An opendkim that cannot bind its socket exits at once, while wait_ports would see the
  # other program's listener and call it up.
  ! port_open "$MILTER_PORT" ||
    die "127.0.0.1:$MILTER_PORT (MAILSTACK_MILTER_PORT) is taken by another program; OpenDKIM cannot listen there"
  opendkim -n -x "$OPENDKIM_CONF" >"$OPENDKIM_DIR/check.log" 2>&1 ||
    { cat "$OPENDKIM_DIR/check.log" >&2; die "OpenDKIM rejects $OPENDKIM_CONF"; }
  log "starting OpenDKIM (milter $MILTER_PORT)"
  # Background no: it stays in the foreground, and writes its own pid file (before it drops
  # root for the opendkim user).
  setsid opendkim -x "$OPENDKIM_CONF" </dev/null >>"$OPENDKIM_LOG" 2>&1 &
  disown || true
}

# --- Postfix ---------------------------------------------------------------------------------

postfix_healthy() {
  pid_alive "$POSTFIX_PID" master && port_open "$SUBMISSION_PORT" && port_open "$SUBMISSIONS_PORT" &&
    port_open "$MX_PORT"
}

start_postfix() {
  local changed=''
  changed+=$(render "$TEMPLATES/postfix-main.cf.in" "$POSTFIX_ETC/main.cf")
  changed+=$(render "$TEMPLATES/postfix-master.cf.in" "$POSTFIX_ETC/master.cf")
  changed+=$(render "$TEMPLATES/virtual_alias.regexp" "$POSTFIX_ETC/virtual_alias.regexp")
  changed+=$(render "$TEMPLATES/sender_login.regexp" "$POSTFIX_ETC/sender_login.regexp")
  changed+=$(render "$TEMPLATES/recipient_access.regexp" "$POSTFIX_ETC/recipient_access.regexp")
  changed+=$(render "$TEMPLATES/transport.regexp" "$POSTFIX_ETC/transport.regexp")
  if pid_alive "$POSTFIX_PID" master; then
    [[ -z $changed ]] && return 0
    log "Postfix configuration changed; restarting Postfix"
    stop_postfix
  fi
  # Creates the queue subdirectories with the ownership and modes Postfix insists on.
  postfix -c "$POSTFIX_ETC" set-permissions >"$POSTFIX_DIR/check.log" 2>&1 ||
    { cat "$POSTFIX_DIR/check.log" >&2; die "postfix set-permissions failed"; }
  postfix -c "$POSTFIX_ETC" check >>"$POSTFIX_DIR/check.log" 2>&1 ||
    { cat "$POSTFIX_DIR/check.log" >&2; die "postfix check failed"; }
  log "starting Postfix (submission $SUBMISSION_PORT, submissions $SUBMISSIONS_PORT, MX $MX_PORT)"
  postfix -c "$POSTFIX_ETC" start </dev/null >>"$POSTFIX_DIR/start.log" 2>&1 ||
    { tail -n 30 "$POSTFIX_DIR/start.log" "$POSTFIX_DIR/maillog" >&2 2>/dev/null; die "postfix failed to start"; }
}

stop_postfix() {
  if pid_alive "$POSTFIX_PID" master; then
    log "stopping Postfix (pid $(read_pid "$POSTFIX_PID"))"
    postfix -c "$POSTFIX_ETC" stop </dev/null >>"$POSTFIX_DIR/start.log" 2>&1 || true
    local i
    for ((i = 0; i < 100; i++)); do
      pid_alive "$POSTFIX_PID" master || break
      sleep 0.1
    done
    # `postfix stop` failed (e.g. config gone): fall back to the pid file.
    stop_pid Postfix "$POSTFIX_PID" master
  fi
}

write_env() {
  local tmp
  tmp=$(mktemp "$ENV_FILE.XXXXXX")
  cat >"$tmp" <<EOF
MAILSTACK_DIR=$DIR
MAILSTACK_HOST=localhost
MAILSTACK_IMAP_PORT=$IMAP_PORT
MAILSTACK_IMAPS_PORT=$IMAPS_PORT
MAILSTACK_IMAPS_NOMOVE_HOST=127.0.0.2
MAILSTACK_IMAPS_FETCH_NO_HOST=127.0.0.3
MAILSTACK_SUBMISSION_PORT=$SUBMISSION_PORT
MAILSTACK_SUBMISSIONS_PORT=$SUBMISSIONS_PORT
MAILSTACK_LMTP_PORT=$LMTP_PORT
MAILSTACK_ENTRA_PORT=$ENTRA_PORT
MAILSTACK_ENTRA_URL=http://127.0.0.1:$ENTRA_PORT
MAILSTACK_ENTRA_KEY=$ENTRA_KEY
MAILSTACK_CA=$TLS_DIR/ca.pem
MAILSTACK_PLAIN_PASSWORD=$PLAIN_PASSWORD
MAILSTACK_TENANT_ID=$TENANT_ID
MAILSTACK_MAIL_ROOT=$MAIL_DIR
MAILSTACK_MX_PORT=$MX_PORT
MAILSTACK_MILTER_PORT=$MILTER_PORT
MAILSTACK_AUTHSERV_ID=$AUTHSERV_ID
MAILSTACK_DKIM_DOMAIN=$DKIM_DOMAIN
MAILSTACK_DKIM_SELECTOR=$DKIM_SELECTOR
MAILSTACK_DKIM_KEY=$DKIM_KEY
EOF
  chmod 644 "$tmp"
  mv -f "$tmp" "$ENV_FILE"
}

# A digest of everything `up` derives the configuration from: templates, settings, script.
fingerprint() {
  {
    printf '%s\n' "$DIR" "$IMAP_PORT" "$IMAPS_PORT" "$SUBMISSION_PORT" "$SUBMISSIONS_PORT" \
      "$LMTP_PORT" "$ENTRA_PORT" "$MX_PORT" "$MILTER_PORT" "$PLAIN_PASSWORD"
    cat "${BASH_SOURCE[0]}" "$TEMPLATES"/*.in "$TEMPLATES"/*.regexp \
      "$REPO_ROOT/crates/fake-entra/fake-entra.example.toml" 2>/dev/null
  } | sha256sum | cut -d' ' -f1
}

# Everything runs, listens, was started from the current configuration, and the fake-entra
# sources are not newer than the running fake-entra.
all_healthy() {
  entra_healthy && dovecot_healthy && opendkim_healthy && postfix_healthy && [[ -s $ENV_FILE ]] &&
    [[ -f $DIR/.fingerprint && $(<"$DIR/.fingerprint") == "$(fingerprint)" ]] &&
    [[ -z $(find "$REPO_ROOT/crates/fake-entra" -type f -newer "$ENTRA_PID" -print -quit 2>/dev/null) ]]
}

# Every IMAP session in IDLE is a Dovecot imap process with an inotify instance of its own, all
# under the one virtual-mail uid: past the kernel's default of 128 instances a user, Dovecot falls
# back to looking every mailbox_idle_check_interval (30 s), so new mail waits up to 30 s (seen
# with the 1,000-mailbox benchmark). Raised when we may (root, a writable /proc/sys).
INOTIFY_INSTANCES=8192
raise_inotify_limit() {
  local file=/proc/sys/fs/inotify/max_user_instances current
  current=$(cat "$file" 2>/dev/null) || return 0
  ((current >= INOTIFY_INSTANCES)) && return 0
  if { echo "$INOTIFY_INSTANCES" >"$file"; } 2>/dev/null; then
    log "raised fs.inotify.max_user_instances from $current to $INOTIFY_INSTANCES (one per IMAP session in IDLE)"
  else
    log "warning: fs.inotify.max_user_instances is $current: past that many IMAP sessions in IDLE, Dovecot notices new mail only every 30 s"
  fi
}

cmd_up() {
  raise_inotify_limit
  if all_healthy 2>/dev/null; then
    log "already running and healthy (state dir $DIR); nothing to do"
    return 0
  fi
  check_os
  local t0=$SECONDS
  install_packages
  ensure_vmail_user
  make_dirs
  make_certs
  start_entra
  start_dovecot
  make_dkim_key
  start_opendkim
  start_postfix
  wait_ports fake-entra "$ENTRA_LOG" "$ENTRA_PORT"
  wait_ports Dovecot "$DOVECOT_DIR/dovecot.log" "$IMAP_PORT" "$IMAPS_PORT" "$LMTP_PORT"
  wait_ports OpenDKIM "$OPENDKIM_LOG" "$MILTER_PORT"
  wait_ports Postfix "$POSTFIX_DIR/maillog" "$SUBMISSION_PORT" "$SUBMISSIONS_PORT" "$MX_PORT"
  write_env
  fingerprint >"$DIR/.fingerprint"
  log "up in $((SECONDS - t0)) s; state dir $DIR; env file $ENV_FILE"
}

cmd_down() {
  local purge=0
  case ${1:-} in
    '') ;;
    --purge) purge=1 ;;
    *) die "usage: mailstack.sh down [--purge]" ;;
  esac
  if [[ -d $DIR ]]; then
    # In parallel: Dovecot and fake-entra each take ~2 s to shut down gracefully.
    stop_postfix &
    stop_pid Dovecot "$DOVECOT_PID" "$DOVECOT_CONF" &
    stop_pid OpenDKIM "$OPENDKIM_PID" "$OPENDKIM_CONF" &
    stop_pid fake-entra "$ENTRA_PID" "$ENTRA_CONF" &
    wait
  fi
  if ((purge)); then
    # Refuse to delete anything that does not look like our state dir.
    if [[ -d $DIR ]]; then
      [[ -f $DIR/env || -d $DIR/dovecot || -d $DIR/postfix || -d $DIR/opendkim || -d $DIR/entra ]] ||
        die "$DIR does not look like a mailstack state dir; not deleting it"
      log "deleting $DIR"
      rm -rf -- "$DIR"
    fi
  fi
}

# Stops one component (dovecot, postfix, opendkim or entra) of this stack, for fault drills.
cmd_stop() {
  case ${1:-} in
    dovecot) stop_pid Dovecot "$DOVECOT_PID" "$DOVECOT_CONF" ;;
    postfix) stop_postfix ;;
    opendkim) stop_pid OpenDKIM "$OPENDKIM_PID" "$OPENDKIM_CONF" ;;
    entra) stop_pid fake-entra "$ENTRA_PID" "$ENTRA_CONF" ;;
    *) die "usage: mailstack.sh stop|start|restart dovecot|postfix|opendkim|entra" ;;
  esac
}

# Starts one stopped component again and waits for its ports.
cmd_start() {
  ensure_vmail_user
  case ${1:-} in
    dovecot)
      start_dovecot
      wait_ports Dovecot "$DOVECOT_DIR/dovecot.log" "$IMAP_PORT" "$IMAPS_PORT" "$LMTP_PORT"
      ;;
    postfix)
      start_postfix
      wait_ports Postfix "$POSTFIX_DIR/maillog" "$SUBMISSION_PORT" "$SUBMISSIONS_PORT" "$MX_PORT"
      ;;
    opendkim)
      start_opendkim
      wait_ports OpenDKIM "$OPENDKIM_LOG" "$MILTER_PORT"
      ;;
    entra)
      start_entra
      wait_ports fake-entra "$ENTRA_LOG" "$ENTRA_PORT"
      ;;
    *) die "usage: mailstack.sh stop|start|restart dovecot|postfix|opendkim|entra" ;;
  esac
}

cmd_status() {
  local bad=0 line
  row() { # name ok port-desc
    if [[ $2 == up ]]; then line='up  '; else line='DOWN'; bad=1; fi
    printf '%-14s %s  %s\n' "$1" "$line" "$3"
  }
  pstate() { if pid_alive "$1" "$2"; then echo "pid $(read_pid "$1")"; else echo "not running"; fi; }
  pstat() { if port_open "$1"; then echo up; else echo down; fi; }
  echo "state dir: $DIR"
  echo "fake-entra: $(pstate "$ENTRA_PID" "$ENTRA_CONF")"
  row '  http' "$(pstat "$ENTRA_PORT")" "127.0.0.1:$ENTRA_PORT  http://127.0.0.1:$ENTRA_PORT"
  echo "dovecot:    $(pstate "$DOVECOT_PID" "$DOVECOT_CONF")"
  row '  imap' "$(pstat "$IMAP_PORT")" "127.0.0.1:$IMAP_PORT  IMAP + STARTTLS"
  row '  imaps' "$(pstat "$IMAPS_PORT")" "127.0.0.1:$IMAPS_PORT  IMAP, implicit TLS"
  row '  lmtp' "$(pstat "$LMTP_PORT")" "127.0.0.1:$LMTP_PORT  LMTP"
  echo "postfix:    $(pstate "$POSTFIX_PID" master)"
  row '  submission' "$(pstat "$SUBMISSION_PORT")" "127.0.0.1:$SUBMISSION_PORT  SMTP submission + STARTTLS"
  row '  submissions' "$(pstat "$SUBMISSIONS_PORT")" "127.0.0.1:$SUBMISSIONS_PORT  SMTP submission, implicit TLS"
  row '  mx' "$(pstat "$MX_PORT")" "127.0.0.1:$MX_PORT  inbound SMTP (no AUTH, local domains only), through OpenDKIM"
  echo "opendkim:   $(pstate "$OPENDKIM_PID" "$OPENDKIM_CONF")"
  row '  milter' "$(pstat "$MILTER_PORT")" "127.0.0.1:$MILTER_PORT  DKIM verification, Authentication-Results: $AUTHSERV_ID"
  pid_alive "$ENTRA_PID" "$ENTRA_CONF" || bad=1
  pid_alive "$DOVECOT_PID" "$DOVECOT_CONF" || bad=1
  pid_alive "$POSTFIX_PID" master || bad=1
  pid_alive "$OPENDKIM_PID" "$OPENDKIM_CONF" || bad=1
  if [[ -s $ENV_FILE ]]; then echo "env file:   $ENV_FILE"; else echo "env file:   missing"; bad=1; fi
  return "$bad"
}

cmd_env() {
  [[ -s $ENV_FILE ]] || die "no env file at $ENV_FILE; run '$0 up' first"
  cat "$ENV_FILE"
}

cmd_seed() {
  local address=${1:-support@helpdesk.test} count=${2:-5}
  [[ $count =~ ^[0-9]+$ ]] || die "usage: mailstack.sh seed [ADDRESS] [COUNT]"
  port_open "$LMTP_PORT" || die "nothing listens on LMTP port 127.0.0.1:$LMTP_PORT; run '$0 up' first"
  command -v python3 >/dev/null 2>&1 || die "python3 is needed for seed"
  python3 "$TEMPLATES/seed.py" --host 127.0.0.1 --port "$LMTP_PORT" "$address" "$count"
}

main() {
  local cmd=${1:-}
  [[ $# -gt 0 ]] && shift
  check_settings
  set_paths
  case $cmd in
    up) cmd_up "$@" ;;
    down) cmd_down "$@" ;;
    status) cmd_status "$@" ;;
    env) cmd_env "$@" ;;
    seed) cmd_seed "$@" ;;
    stop) cmd_stop "$@" ;;
    start) cmd_start "$@" ;;
    restart)
      cmd_stop "$@"
      cmd_start "$@"
      ;;
    -h | --help | help) usage ;;
    *)
      usage >&2
      exit 2
      ;;
  esac
}

main "$@"
