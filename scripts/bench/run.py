#!/usr/bin/env python3
"""run.py -- the ingest benchmark (issue 7). Called by scripts/bench.sh, which installs the
packages, brings up the mail stack and builds the release binary first.

    run.py [--count 10000] [--seed 7] [--with-50k] [--runs 3] [--no-report] [--keep] [--only TOOLS]

--runs rounds (default 3), the same data in each: the load generator fills one fresh mailbox per
tool (bench-<tag>-r<round>-<tool>@helpdesk.test, hard links of the same files), then each tool runs
once, in an order rotated by one every round (interleaved), and the report gives each tool's median
run (by wall time) with every round's wall time. The tools:
  the bare pipeline (examples/bare_pipeline.rs: 200-message UID FETCH batches, mail-parser, one
  multi-row insert per batch into SQLite with mailintake's durability, no dispositions: the floor
  mailintake is measured against), mailintake once (SQLite), mailintake once (PostgreSQL), mbsync
  (download only, FSync no), py_ingest.py (imaplib + email + sqlite3).
Each under /usr/bin/time -v: wall time, user+system CPU, peak RSS. Afterwards it checks the
outcomes in each database, that the mailintake sessions downloaded no quarantined body (Dovecot's
per-session body_bytes on logout) and, with --with-50k, mailintake's peak RSS at 50,000 messages.
Results: JSON in the work dir, figures printed, and the block between the markers in BENCHMARKS.md
rewritten. Everything it created (mailboxes, fake-entra, PostgreSQL database, work dir) is removed.
"""

import argparse
import json
import os
import platform
import re
import shlex
import shutil
import signal
import socket
import sqlite3
import subprocess
import sys
import time
from datetime import datetime, timezone

HERE = os.path.dirname(os.path.abspath(__file__))
REPO = os.path.dirname(os.path.dirname(HERE))
ENV = {}
QUARANTINE_LIMIT = 12 * 1024 * 1024
BENCH_CLIENT_ID = "5d2b8e41-7c3a-4f9e-b1d6-2e4f6a8c0b3d"
BENCH_SECRET = "bench-secret-value"
PG_URL_BASE = "postgres://postgres@127.0.0.1:5432"
# Explicit, so every PostgreSQL row pays the same: mailintake's default stays `prefer` (TLS when
# the server offers it, as the local one does). BENCH_PG_PARAMS overrides (e.g. sslmode=disable).
PG_PARAMS = os.environ.get("BENCH_PG_PARAMS", "sslmode=prefer")
TARGETS = {"sqlite_vs_mbsync": 1.6, "sqlite_vs_python": 5.5, "pg_vs_mbsync": 1.2, "rss_mib": 128,
           "sqlite_vs_bare": 0.8, "pg_vs_sqlite": 0.8}


def log(msg):
    print(f"bench: {msg}", file=sys.stderr, flush=True)


def sh(*argv, **kw):
    p = subprocess.run(argv, capture_output=True, text=True, **kw)
    if p.returncode != 0:
        raise RuntimeError(f"{' '.join(argv)} exited with {p.returncode}: {p.stderr.strip()}")
    return p.stdout


def load_env():
    out = sh(os.path.join(REPO, "scripts", "mailstack.sh"), "env")
    for line in out.splitlines():
        k, _, v = line.partition("=")
        ENV[k] = v


def free_port():
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()
    return port


def wait_port(port, timeout=20):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=1).close()
            return
        except OSError:
            time.sleep(0.1)
    raise RuntimeError(f"nothing listens on 127.0.0.1:{port}")


def loadavg():
    with open("/proc/loadavg") as f:
        return " ".join(f.read().split()[:3])


def machine():
    cpu = "unknown"
    with open("/proc/cpuinfo") as f:
        for line in f:
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    with open("/proc/meminfo") as f:
        mem_kb = int(f.readline().split()[1])
    def ver(*argv):
        try:
            return subprocess.run(argv, capture_output=True, text=True).stdout.splitlines()[0].strip()
        except (OSError, IndexError):
            return "?"
    return {
        "nproc": os.cpu_count(), "cpu": cpu, "mem_gib": round(mem_kb / 1024 / 1024, 1),
        "kernel": platform.release(),
        "dovecot": ver("dovecot", "--version"), "mbsync": ver("mbsync", "--version"),
        "python": platform.python_version(),
        "postgres": ver("psql", "-h", "127.0.0.1", "-U", "postgres", "-tAc", "show server_version"),
        "rustc": ver("rustc", "--version"),
        "git": ver("git", "-C", REPO, "describe", "--always", "--dirty"),
    }


# ---------------------------------------------------------------------------------------------
# measuring

def dovecot_children_cpu():
    """CPU seconds of Dovecot's exited child processes (imap, auth, ...): the delta over a run is
    roughly the server side of that run (other users of the shared stack add noise)."""
    try:
        pid = open(os.path.join(ENV["MAILSTACK_DIR"], "dovecot", "run", "master.pid")).read().split()[0]
        fields = open(f"/proc/{pid}/stat").read().rsplit(")", 1)[1].split()
        return (int(fields[13]) + int(fields[14])) / os.sysconf("SC_CLK_TCK")
    except (OSError, IndexError, ValueError):
        return None


def timed(argv, log_path, env=None):
    """Runs argv under /usr/bin/time -v; returns wall, cpu, rss and the exit code."""
    full = ["/usr/bin/time", "-v", "-o", log_path + ".time", *argv]
    dc0 = dovecot_children_cpu()
    t0 = time.monotonic()
    with open(log_path, "w") as out:
        rc = subprocess.run(full, stdout=out, stderr=subprocess.STDOUT, env=env).returncode
    wall = time.monotonic() - t0
    time.sleep(0.5)  # the imap process exits after the logout and is reaped
    dc1 = dovecot_children_cpu()
    text = open(log_path + ".time").read()
    def field(name):
        m = re.search(rf"{re.escape(name)}: (.+)", text)
        return m.group(1).strip() if m else None
    user, system = float(field("User time (seconds)")), float(field("System time (seconds)"))
    return {"rc": rc, "wall_s": round(wall, 3), "user_s": user, "sys_s": system,
            "cpu_s": round(user + system, 2), "rss_kib": int(field("Maximum resident set size (kbytes)")),
            "load_before": None,
            "dovecot_cpu_s": round(dc1 - dc0, 1) if dc0 is not None and dc1 is not None else None}


def dovecot_log_offset():
    return os.path.getsize(os.path.join(ENV["MAILSTACK_DIR"], "dovecot", "dovecot.log"))


def dovecot_sessions(offset, user):
    """Per-session logout counters of `user` logged after `offset`."""
    path = os.path.join(ENV["MAILSTACK_DIR"], "dovecot", "dovecot.log")
    with open(path, "rb") as f:
        f.seek(offset)
        text = f.read().decode("utf-8", "replace")
    sessions = []
    for line in text.splitlines():
        if f"imap({user})" in line and "Disconnected" in line:
            kv = dict(re.findall(r"(\w+)=(\d+)", line))
            sessions.append({k: int(v) for k, v in kv.items()})
    return sessions


def doveadm_status(user, folder):
    try:
        out = sh("doveadm", "-c", os.path.join(ENV["MAILSTACK_DIR"], "dovecot", "dovecot.conf"),
                 "mailbox", "status", "-u", user, "messages unseen", folder)
        return dict(re.findall(r"(\w+)=(\d+)", out))
    except RuntimeError:
        return {}


# ---------------------------------------------------------------------------------------------
# the tools

def mailintake_config(work, name, address, db_url, entra_port):
    path = os.path.join(work, f"{name}.toml")
    with open(path, "w") as f:
        f.write(f"""[database]
url = "{db_url}"

[identities.bench]
flow = "client_credentials"
tenant = "{ENV['MAILSTACK_TENANT_ID']}"
client_id = "{BENCH_CLIENT_ID}"
client_secret = {{ env = "BENCH_CLIENT_SECRET" }}
authority = "http://127.0.0.1:{entra_port}/{{tenant}}"

[[mailboxes]]
name = "{name}"
address = "{address}"
identity = "bench"
dispose = "seen"
max_message_bytes = {QUARANTINE_LIMIT}

[mailboxes.imap]
host = "localhost"
port = {ENV['MAILSTACK_IMAPS_PORT']}
tls = "implicit"
ca_file = "{ENV['MAILSTACK_CA']}"
""")
    return path


def graph_config(work, name, address, db_url, entra_port, graph_port):
    """The same mailbox read through Graph: fake-graph in front of the same Dovecot."""
    path = os.path.join(work, f"{name}.toml")
    with open(path, "w") as f:
        f.write(f"""[database]
url = "{db_url}"

[identities.bench]
flow = "client_credentials"
tenant = "{ENV['MAILSTACK_TENANT_ID']}"
client_id = "{BENCH_CLIENT_ID}"
client_secret = {{ env = "BENCH_CLIENT_SECRET" }}
authority = "http://127.0.0.1:{entra_port}/{{tenant}}"

[[mailboxes]]
name = "{name}"
address = "{address}"
identity = "bench"
dispose = "seen"
max_message_bytes = {QUARANTINE_LIMIT}
transport = "graph"

[mailboxes.graph]
url = "http://127.0.0.1:{graph_port}"
""")
    return path


def run_mailintake(work, name, address, db_url, entra_port, cfg=None):
    cfg = cfg or mailintake_config(work, name, address, db_url, entra_port)
    env = dict(os.environ, BENCH_CLIENT_SECRET=BENCH_SECRET)
    # The product's default logging (info: one line per ticket) unless BENCH_RUST_LOG says otherwise
    # (e.g. BENCH_RUST_LOG=warn,mailintake=debug,sqlx::query=debug for a timing breakdown).
    env.pop("RUST_LOG", None)
    if os.environ.get("BENCH_RUST_LOG"):
        env["RUST_LOG"] = os.environ["BENCH_RUST_LOG"]
    # Profiling hooks: BENCH_MAILINTAKE (another build, e.g. with symbols) and BENCH_WRAP (a command
    # prefix such as "perf record -g -o /tmp/perf.data" or "strace -c -f -o /tmp/strace.txt").
    binary = os.environ.get("BENCH_MAILINTAKE") or os.path.join(REPO, "target", "release", "mailintake")
    # The schema is created before the timed run (`migrate`), as in production.
    subprocess.run([binary, "--config", cfg, "migrate"], check=True, env=env, capture_output=True)
    off = dovecot_log_offset()
    wrap = shlex.split(os.environ.get("BENCH_WRAP", ""))
    r = timed([*wrap, binary, "--config", cfg, "once"], os.path.join(work, f"{name}.log"), env=env)
    time.sleep(0.3)  # the logout line
    r["sessions"] = dovecot_sessions(off, address)
    return r


def mailintake_outcomes_sqlite(path):
    db = sqlite3.connect(path)
    try:
        rows = dict(db.execute("SELECT outcome, count(*) FROM imap_messages GROUP BY outcome").fetchall())
        rows["disposed"] = db.execute("SELECT count(*) FROM imap_messages WHERE disposed_at IS NOT NULL").fetchone()[0]
        rows["attachments"] = db.execute("SELECT count(*) FROM attachments").fetchone()[0]
        return rows
    finally:
        db.close()


def psql(db, sql):
    return sh("psql", "-h", "127.0.0.1", "-U", "postgres", "-d", db, "-v", "ON_ERROR_STOP=1", "-tAc", sql)


def mailintake_outcomes_pg(db):
    out = psql(db, "SELECT outcome, count(*) FROM imap_messages GROUP BY outcome")
    rows = {k: int(v) for k, v in (ln.split("|") for ln in out.split())}
    rows["disposed"] = int(psql(db, "SELECT count(*) FROM imap_messages WHERE disposed_at IS NOT NULL").strip())
    rows["attachments"] = int(psql(db, "SELECT count(*) FROM attachments").strip())
    return rows


def run_mbsync(work, address):
    d = os.path.join(work, "mbsync")
    os.makedirs(d)
    cfg = os.path.join(work, "mbsyncrc")
    with open(cfg, "w") as f:
        f.write(f"""FSync no

IMAPAccount bench
Host localhost
Port {ENV['MAILSTACK_IMAPS_PORT']}
User {address}
Pass {ENV['MAILSTACK_PLAIN_PASSWORD']}
SSLType IMAPS
CertificateFile {ENV['MAILSTACK_CA']}
AuthMechs PLAIN

IMAPStore bench-far
Account bench

MaildirStore bench-near
Path {d}/
Inbox {d}/INBOX

Channel bench
Far :bench-far:
Near :bench-near:
Patterns INBOX
Create Near
Sync Pull
MaxSize {QUARANTINE_LIMIT // 1024}k
SyncState *
""")
    off = dovecot_log_offset()
    r = timed(["mbsync", "-c", cfg, "-q", "bench"], os.path.join(work, "mbsync.log"))
    time.sleep(0.3)
    r["sessions"] = dovecot_sessions(off, address)
    files = [os.path.join(dp, fn) for dp, _, fns in os.walk(os.path.join(d, "INBOX")) for fn in fns
             if os.path.basename(dp) in ("cur", "new")]
    r["files"] = len(files)
    r["bytes"] = sum(os.path.getsize(p) for p in files)
    return r


def run_bare(work, address):
    """The bare pipeline on SQLite: the reference row (issue 19)."""
    binary = os.environ.get("BENCH_BARE", os.path.join(REPO, "target", "release", "examples", "bare_pipeline"))
    off = dovecot_log_offset()
    db = os.path.join(work, "bare", "bare.db")
    os.makedirs(os.path.dirname(db), exist_ok=True)
    r = timed([binary, "--host", "localhost", "--port", ENV["MAILSTACK_IMAPS_PORT"], "--ca", ENV["MAILSTACK_CA"],
               "--user", address, "--password", ENV["MAILSTACK_PLAIN_PASSWORD"], "--db", f"sqlite://{db}",
               "--max-bytes", str(QUARANTINE_LIMIT)], os.path.join(work, "bare.log"))
    time.sleep(0.3)
    r["sessions"] = dovecot_sessions(off, address)
    try:
        r["result"] = json.loads(open(os.path.join(work, "bare.log")).read().strip().splitlines()[-1])
    except (ValueError, IndexError):
        r["result"] = None
    return r


def run_python(work, address):
    off = dovecot_log_offset()
    r = timed([sys.executable, os.path.join(HERE, "py_ingest.py"), "--host", "localhost",
               "--port", ENV["MAILSTACK_IMAPS_PORT"], "--ca", ENV["MAILSTACK_CA"], "--user", address,
               "--password", ENV["MAILSTACK_PLAIN_PASSWORD"], "--db", os.path.join(work, "python.db"),
               "--max-bytes", str(QUARANTINE_LIMIT)], os.path.join(work, "python.log"))
    time.sleep(0.3)
    r["sessions"] = dovecot_sessions(off, address)
    try:
        r["result"] = json.loads(open(os.path.join(work, "python.log")).read().strip().splitlines()[-1])
    except (ValueError, IndexError):
        r["result"] = None
    return r


# ---------------------------------------------------------------------------------------------

def start_fake_entra(work, addresses):
    port = free_port()
    conf = os.path.join(work, "fake-entra.toml")
    with open(conf, "w") as f:
        f.write(f"""tenant_id = "{ENV['MAILSTACK_TENANT_ID']}"
tenant_domains = ["helpdesk.test"]

[[clients]]
client_id = "{BENCH_CLIENT_ID}"
display_name = "mailintake-bench"
secret = "{BENCH_SECRET}"
app_roles = ["IMAP.AccessAsApp"]
mailboxes = {json.dumps(addresses)}
""")
    binary = os.path.join(REPO, "target", "debug", "fake-entra")
    logf = open(os.path.join(work, "fake-entra.log"), "w")
    proc = subprocess.Popen([binary, "--listen", f"127.0.0.1:{port}", "--key", ENV["MAILSTACK_ENTRA_KEY"],
                             "--config", conf], stdout=logf, stderr=subprocess.STDOUT,
                            stdin=subprocess.DEVNULL)
    wait_port(port)
    return proc, port


def start_fake_graph(work, addresses):
    """fake-graph over the stack's Dovecot, with a fake-entra of its own whose tokens are Graph's."""
    entra_port = free_port()
    conf = os.path.join(work, "fake-entra-graph.toml")
    with open(conf, "w") as f:
        f.write(f"""tenant_id = "{ENV['MAILSTACK_TENANT_ID']}"
tenant_domains = ["helpdesk.test"]
resource = "https://graph.microsoft.com"

[[clients]]
client_id = "{BENCH_CLIENT_ID}"
display_name = "mailintake-bench"
secret = "{BENCH_SECRET}"
app_roles = ["Mail.ReadWrite"]
mailboxes = {json.dumps(addresses)}
""")
    procs = []
    logf = open(os.path.join(work, "fake-entra-graph.log"), "w")
    procs.append(subprocess.Popen([os.path.join(REPO, "target", "debug", "fake-entra"), "--listen",
                                   f"127.0.0.1:{entra_port}", "--key", ENV["MAILSTACK_ENTRA_KEY"],
                                   "--config", conf], stdout=logf, stderr=subprocess.STDOUT,
                                  stdin=subprocess.DEVNULL))
    wait_port(entra_port)
    graph_port = free_port()
    users = [a for addr in addresses for a in ("--user", addr)]
    logg = open(os.path.join(work, "fake-graph.log"), "w")
    env = dict(os.environ, MAILSTACK_PLAIN_PASSWORD=ENV["MAILSTACK_PLAIN_PASSWORD"])
    procs.append(subprocess.Popen([os.path.join(REPO, "target", "release", "fake-graph"), "--listen",
                                   f"127.0.0.1:{graph_port}", "--key", ENV["MAILSTACK_ENTRA_KEY"], *users,
                                   "--imap", f"127.0.0.1:{ENV['MAILSTACK_IMAPS_PORT']}",
                                   "--imap-ca", ENV["MAILSTACK_CA"]], stdout=logg, stderr=subprocess.STDOUT,
                                  stdin=subprocess.DEVNULL, env=env))
    wait_port(graph_port)
    return procs, entra_port, graph_port


def count_value_requests(work, address):
    """The `$value` downloads of `address` fake-graph answered 200, from its request log."""
    with open(os.path.join(work, "fake-graph.log")) as f:
        return sum(1 for line in f if "/$value" in line and address in line and " 200" in line)


def loadgen(addresses, count, seed, manifest):
    out = sh(sys.executable, os.path.join(HERE, "loadgen.py"), "--count", str(count), "--seed", str(seed),
             "--quarantine-limit", str(QUARANTINE_LIMIT), "--manifest", manifest,
             "--mail-root", ENV["MAILSTACK_MAIL_ROOT"], *addresses)
    return json.loads(out)


def clean_mailboxes(addresses):
    subprocess.run([sys.executable, os.path.join(HERE, "loadgen.py"), "--clean",
                    "--mail-root", ENV["MAILSTACK_MAIL_ROOT"], *addresses],
                   capture_output=True)


NAMES = {"bare": "the bare pipeline, SQLite", "sqlite": "mailintake once, SQLite",
         "postgres": "mailintake once, PostgreSQL", "mbsync": "mbsync", "python": "Python imaplib + email + sqlite3",
         "graph": "mailintake once, Graph (fake-graph over the same Dovecot), SQLite"}


def run_tool(tool, work, address, k, pg_db, entra_port, graph=None):
    """One timed run of `tool` on `address` (round k), with its outcome checks' inputs."""
    sub = os.path.join(work, f"r{k}")
    os.makedirs(sub, exist_ok=True)
    if tool == "bare":
        return run_bare(sub, address)
    if tool == "sqlite":
        dbfile = os.path.join(sub, "sqlite", "mailintake.db")
        r = run_mailintake(sub, "sqlite", address, f"sqlite://{dbfile}", entra_port)
        r["outcomes"] = mailintake_outcomes_sqlite(dbfile)
    elif tool == "postgres":
        db = f"{pg_db}_{k}"
        psql("postgres", f"CREATE DATABASE {db}")
        r = run_mailintake(sub, "postgres", address, f"{PG_URL_BASE}/{db}?{PG_PARAMS}", entra_port)
        r["outcomes"] = mailintake_outcomes_pg(db)
    elif tool == "graph":
        _, graph_entra_port, graph_port = graph
        dbfile = os.path.join(sub, "graph", "mailintake.db")
        cfg = graph_config(sub, "graph", address, f"sqlite://{dbfile}", graph_entra_port, graph_port)
        r = run_mailintake(sub, "graph", address, f"sqlite://{dbfile}", entra_port, cfg=cfg)
        r["outcomes"] = mailintake_outcomes_sqlite(dbfile)
        r["value_requests"] = count_value_requests(work, address)
    elif tool == "mbsync":
        return run_mbsync(sub, address)
    else:
        return run_python(sub, address)
    r["inbox_after"] = doveadm_status(address, "INBOX")
    r["quarantine_folder"] = doveadm_status(address, "Quarantine")
    return r


def median_run(rs):
    """The run with the median wall time, with every run's wall time beside it. The outcomes of
    all runs must agree (the same data each round)."""
    ordered = sorted(rs, key=lambda r: r["wall_s"])
    med = dict(ordered[(len(ordered) - 1) // 2])
    med["walls"] = [r["wall_s"] for r in rs]
    outcomes = [r.get("outcomes") for r in rs]
    med["outcomes_agree"] = all(o == outcomes[0] for o in outcomes)
    return med


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--count", type=int, default=10000)
    ap.add_argument("--seed", type=int, default=7)
    ap.add_argument("--with-50k", action="store_true", help="also measure mailintake's RSS at 50,000 messages")
    ap.add_argument("--big-count", type=int, default=50000)
    ap.add_argument("--no-report", action="store_true", help="do not rewrite BENCHMARKS.md")
    ap.add_argument("--keep", action="store_true", help="keep the work dir (logs, databases)")
    ap.add_argument("--only", default="bare,sqlite,postgres,graph,mbsync,python")
    ap.add_argument("--runs", type=int, default=3, help="rounds, each tool once per round; medians reported")
    args = ap.parse_args()
    only = set(args.only.split(","))

    load_env()
    tag = f"{os.getpid()}"
    work = os.path.join(os.environ.get("TMPDIR", "/tmp"), f"mailintake-bench-{tag}")
    os.makedirs(work)
    tools = ["bare", "sqlite", "postgres", "graph", "mbsync", "python"]
    round_addr = {t: [f"bench-{tag}-r{k}-{t}@helpdesk.test" for k in range(args.runs)] for t in tools}
    addr = {f"{t}-{k}": a for t in tools for k, a in enumerate(round_addr[t])}
    addr["big"] = f"bench-{tag}-big@helpdesk.test"
    pg_db = f"mailintake_bench_{tag}"
    entra = None
    graph = None
    results = {"started": datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M UTC"), "machine": machine(),
               "count": args.count, "seed": args.seed, "quarantine_limit": QUARANTINE_LIMIT, "tools": {},
               "binary": os.environ.get("BENCH_MAILINTAKE")}

    def cleanup(*_):
        clean_mailboxes(list(addr.values()))
        for proc in [entra, *(graph[0] if graph else [])]:
            if proc is not None and proc.poll() is None:
                proc.terminate()
                proc.wait(timeout=10)
        for k in range(args.runs):
            subprocess.run(["psql", "-h", "127.0.0.1", "-U", "postgres", "-qc",
                            f"DROP DATABASE IF EXISTS {pg_db}_{k}"], capture_output=True)
        if not args.keep:
            shutil.rmtree(work, ignore_errors=True)

    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    try:
        entra, entra_port = start_fake_entra(work, list(addr.values()))
        if "graph" in only:
            graph = start_fake_graph(work, round_addr["graph"])
        log(f"work dir {work}; fake-entra for the bench mailboxes on 127.0.0.1:{entra_port}")
        runs = {t: [] for t in tools}
        for k in range(args.runs):
            # Interleaved: each round fills fresh mailboxes with the same data and runs every tool
            # once, in an order rotated by one per round, so that no tool always runs first (cold
            # caches) or last (after the others' load).
            rnd = {t: round_addr[t][k] for t in tools}
            log(f"round {k + 1}/{args.runs}: load generator, {args.count} messages into {len(tools)} mailboxes "
                f"(load {loadavg()})")
            gen = loadgen([rnd[t] for t in tools], args.count, args.seed,
                          os.path.join(work, f"manifest-{k}.json"))
            results["loadgen"] = gen
            log(f"  {gen['count']} messages, {gen['bytes'] / 1e6:.0f} MB in {gen['seconds']['total']} s "
                f"({gen['msgs_per_s']} msg/s)")
            order = [t for t in tools if t in only]
            order = order[k % len(order):] + order[:k % len(order)] if order else order
            for t in order:
                la = loadavg()
                log(f"  {NAMES[t]} (load {la})")
                r = run_tool(t, work, rnd[t], k, pg_db, entra_port, graph)
                r["load_before"] = la
                runs[t].append(r)
            clean_mailboxes([rnd[t] for t in tools])
        for t, rs in runs.items():
            if rs:
                results["tools"][t] = median_run(rs)
        results["fetchable_bytes"] = results["loadgen"]["fetchable_bytes"]
        results["runs"] = args.runs

        if args.with_50k:
            log(f"RSS flatness: {args.big_count} messages (load {loadavg()})")
            big = loadgen([addr["big"]], args.big_count, args.seed, os.path.join(work, "manifest-big.json"))
            results["loadgen_big"] = big
            log(f"  generated in {big['seconds']['total']} s ({big['msgs_per_s']} msg/s)")
            la = loadavg()
            dbfile = os.path.join(work, "big", "mailintake.db")
            r = run_mailintake(work, "big", addr["big"], f"sqlite://{dbfile}", entra_port)
            r["load_before"] = la
            r["outcomes"] = mailintake_outcomes_sqlite(dbfile)
            results["tools"]["sqlite_big"] = r
            clean_mailboxes([addr["big"]])

        results["finished"] = datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
        results["load_after"] = loadavg()
        with open(os.path.join(work, "results.json"), "w") as f:
            json.dump(results, f, indent=1)
        text = render(results)
        print(text)
        if not args.no_report:
            write_report(results, text)
        return 0 if results.get("ok", True) else 1
    finally:
        cleanup()


# ---------------------------------------------------------------------------------------------
# report

def render(res):
    n = res["count"]
    fetch_mb = res["fetchable_bytes"] / 1e6
    t = res["tools"]
    lines = []
    m = res["machine"]
    g = res["loadgen"]
    lines.append(f"Run {res['started']} → {res['finished']}; machine: {m['nproc']} × {m['cpu']}, "
                 f"{m['mem_gib']} GiB RAM, Linux {m['kernel']}; {m['dovecot'] and 'Dovecot ' + m['dovecot']}, "
                 f"PostgreSQL {m['postgres']}, {m['mbsync']}, Python {m['python']}, {m['rustc']}; "
                 f"mailintake at {m['git']}" + (f" (binary {res['binary']})" if res.get("binary") else "") + ".")
    lines.append("")
    lines.append(f"Data: {g['count']} messages, {g['bytes'] / 1e6:.0f} MB (RFC822.SIZE sum), seed {g['seed']}; "
                 f"{g['oversize_count']} above the {res['quarantine_limit'] // 2**20} MiB quarantine limit "
                 f"({g['oversize_bytes'] / 1e6:.0f} MB, never to be downloaded), so {g['fetchable_count']} messages / "
                 f"{fetch_mb:.0f} MB to fetch. Kinds: {g['kinds']}; {g['size_5_50k']} of them 5–50 KB; "
                 f"{g['replies']} replies, {g['redeliveries']} re-deliveries; charsets {g['charsets']}.")
    lines.append(f"Load generator: {g['seconds']['total']} s for {g['count']} messages into "
                 f"{len(g['addresses'])} mailboxes ({g['msgs_per_s']} msg/s; render {g['seconds']['render']} s, "
                 f"link {g['seconds']['link']} s, Dovecot index {g['seconds']['index']} s).")
    if "loadgen_big" in res:
        b = res["loadgen_big"]
        lines.append(f"Load generator, big inbox: {b['count']} messages / {b['bytes'] / 1e6:.0f} MB in "
                     f"{b['seconds']['total']} s ({b['msgs_per_s']} msg/s).")
    lines.append("")
    lines.append("| tool | wall s | msg/s | MB/s | CPU s (user+sys) | Dovecot CPU s | peak RSS MiB | load avg before | exit |")
    lines.append("| --- | ---: | ---: | ---: | ---: | ---: | ---: | --- | ---: |")
    names = {"bare": "bare pipeline (reference), SQLite", "sqlite": "mailintake once, SQLite", "postgres": "mailintake once, PostgreSQL",
             "mbsync": "mbsync (download only, FSync no)", "python": "Python imaplib + email + sqlite3",
             "graph": "mailintake once, Graph (fake-graph over the same Dovecot), SQLite",
             "sqlite_big": f"mailintake once, SQLite, {res.get('loadgen_big', {}).get('count', '')} messages"}
    for k in ("bare", "sqlite", "postgres", "graph", "mbsync", "python", "sqlite_big"):
        if k not in t:
            continue
        r = t[k]
        cnt = res["loadgen_big"]["count"] if k == "sqlite_big" else n
        mb = res["loadgen_big"]["fetchable_bytes"] / 1e6 if k == "sqlite_big" else fetch_mb
        lines.append(f"| {names[k]} | {r['wall_s']:.1f} | {cnt / r['wall_s']:.0f} | {mb / r['wall_s']:.1f} | "
                     f"{r['cpu_s']:.1f} ({r['user_s']:.1f}+{r['sys_s']:.1f}) | {r.get('dovecot_cpu_s')} | {r['rss_kib'] / 1024:.0f} | "
                     f"{r['load_before']} | {r['rc']} |")
    if res.get("runs", 1) > 1:
        lines.append("")
        lines.append(f"Medians of {res['runs']} interleaved rounds; wall s per round: "
                     + "; ".join(f"{names[k]} {t[k]['walls']}" for k in ("bare", "sqlite", "postgres", "graph", "mbsync", "python")
                                 if k in t and "walls" in t[k]) + ".")
    lines.append("")
    lines.append("Throughput ratios (messages/s of the medians; target in brackets):")
    res["ok"] = True

    def ratio(a, b, target, label):
        if a in t and b in t:
            x = t[b]["wall_s"] / t[a]["wall_s"]
            met = x >= target
            res["ok"] &= met
            res.setdefault("ratios", {})[label] = round(x, 2)
            lines.append(f"- {label}: **{x:.2f}×** (≥ {target}×) — {'met' if met else 'MISSED'}")
    ratio("sqlite", "bare", TARGETS["sqlite_vs_bare"], "mailintake SQLite / bare pipeline")
    ratio("postgres", "sqlite", TARGETS["pg_vs_sqlite"], "mailintake PostgreSQL / mailintake SQLite")
    ratio("sqlite", "mbsync", TARGETS["sqlite_vs_mbsync"], "mailintake SQLite / mbsync")
    ratio("sqlite", "python", TARGETS["sqlite_vs_python"], "mailintake SQLite / Python")
    ratio("postgres", "mbsync", TARGETS["pg_vs_mbsync"], "mailintake PostgreSQL / mbsync")
    ratio("postgres", "python", 0, "mailintake PostgreSQL / Python")
    # No target: the Graph row measures fake-graph (one Graph request per message, each an IMAP
    # round trip to Dovecot) as much as mailintake.
    ratio("graph", "sqlite", 0, "mailintake over Graph / over IMAP, SQLite")
    lines.append("")
    lines.append("Checks:")
    for k in ("sqlite", "postgres", "graph", "sqlite_big"):
        if k not in t:
            continue
        r = t[k]
        rss = r["rss_kib"] / 1024
        ok = rss <= TARGETS["rss_mib"]
        res["ok"] &= ok
        agree = r.get("outcomes_agree", True)
        res["ok"] &= agree
        lines.append(f"- {names[k]}: peak RSS {rss:.0f} MiB (≤ {TARGETS['rss_mib']} MiB) — {'met' if ok else 'MISSED'}; "
                     f"outcomes {r.get('outcomes')}" + ("" if agree else " — OUTCOMES DIFFER BETWEEN ROUNDS"))
        if k == "graph":
            # Dovecot's sessions here are fake-graph's (it reads every new message once to build
            # its model): what mailintake downloaded is the count of $value requests.
            same = r.get("outcomes") == t.get("sqlite", {}).get("outcomes", r.get("outcomes"))
            res["ok"] &= same
            lines.append(f"  outcomes {'the same as' if same else 'DIFFERENT FROM'} the IMAP row's; "
                         f"$value downloads {r.get('value_requests')} "
                         f"(messages to fetch {res['loadgen']['fetchable_count']})")
            continue
        body = sum(s.get("body_bytes", 0) for s in r["sessions"])
        out = sum(s.get("out", 0) for s in r["sessions"])
        want = res["loadgen_big"]["fetchable_bytes"] if k == "sqlite_big" else res["fetchable_bytes"]
        over = res["loadgen_big"]["oversize_bytes"] if k == "sqlite_big" else res["loadgen"]["oversize_bytes"]
        # Every non-quarantined message downloaded exactly once (body_bytes == their total) and no
        # more than protocol overhead besides (out - body_bytes far below one oversized body).
        qbytes = body - want
        overhead = out - body
        ok = qbytes == 0 and overhead < (1 << 20) + 300 * (res["loadgen_big"]["count"] if k == "sqlite_big" else n)
        res["ok"] &= ok
        lines.append(f"  Dovecot, {len(r['sessions'])} session(s): body_bytes={body} (non-quarantined messages "
                     f"total {want}; oversized {over}), out={out} (protocol overhead {overhead}): quarantined "
                     f"body bytes downloaded = {max(qbytes, 0)} — {'met' if ok else 'CHECK'}"
                     + (f"; INBOX after: {r['inbox_after']}, Quarantine: {r['quarantine_folder']}" if "inbox_after" in r else ""))
    if "sqlite" in t and "sqlite_big" in t:
        a, b = t["sqlite"]["rss_kib"] / 1024, t["sqlite_big"]["rss_kib"] / 1024
        flat = b <= a * 1.15 + 4
        res["ok"] &= flat
        lines.append(f"- RSS flatness: {a:.0f} MiB at {n} → {b:.0f} MiB at {res['loadgen_big']['count']} messages "
                     f"({(b / a - 1) * 100:+.0f} %) — {'flat' if flat else 'NOT FLAT'}")
    if "mbsync" in t:
        r = t["mbsync"]
        lines.append(f"- mbsync stored {r['files']} files, {r['bytes']} bytes; Dovecot body_bytes="
                     f"{sum(s.get('body_bytes', 0) for s in r['sessions'])}")
    if "bare" in t:
        lines.append(f"- bare pipeline: {t['bare'].get('result')}")
    if "python" in t:
        lines.append(f"- Python: {t['python'].get('result')}")
    lines.append(f"- load average after the run: {res['load_after']}")
    return "\n".join(lines)


BEGIN = "<!-- bench:begin (written by scripts/bench.sh; edits inside are overwritten) -->"
END = "<!-- bench:end -->"


def write_report(res, text):
    path = os.path.join(REPO, "BENCHMARKS.md")
    block = f"{BEGIN}\n{text}\n{END}"
    if os.path.exists(path):
        doc = open(path).read()
        if BEGIN in doc and END in doc:
            doc = doc[:doc.index(BEGIN)] + block + doc[doc.index(END) + len(END):]
        else:
            doc = doc.rstrip() + "\n\n" + block + "\n"
    else:
        doc = "# Benchmarks\n\nRegenerate with `scripts/bench.sh`.\n\n" + block + "\n"
    with open(path, "w") as f:
        f.write(doc)
    log(f"wrote {path}")


if __name__ == "__main__":
    sys.exit(main())
