#!/usr/bin/env python3
"""mailboxes.py -- the many-mailboxes benchmark (issue 17, item 4). Run by
`scripts/bench.sh --mailboxes N`, which brings up the mail stack and builds the release binary.

    mailboxes.py [--mailboxes 1000] [--identities 10] [--deliveries 200] [--rate 5]
                 [--fleet-mailboxes 60] [--fleet-messages 50] [--workers 1,2,3]
                 [--skip-one] [--skip-fleet] [--no-report] [--keep]

One worker, SQLite, IDLE: `mailintake run` (release build) watches --mailboxes fresh mailboxes
(bench-<pid>-m<i>@helpdesk.test) that share --identities client-credentials identities of its own
fake Entra ID. It measures
  peak RSS         -- VmHWM of the process (/proc/PID/status), and VmRSS once all are in IDLE;
  time to IDLE     -- from the start until every mailbox's first sweep is done and the process holds
                      one IMAP connection per mailbox (the task goes into IDLE right after);
  token requests   -- successful token requests in the fake Entra ID's log (target: one per identity);
  delivery latency -- --deliveries messages over LMTP into random mailboxes, --rate a second, from
                      LMTP's 250 to the committed ticket row (SQLite polled every 20 ms, read-only);
  HTTP             -- 20 GETs of `/` and of `/metrics` each, one after the other, once idle;
  SIGTERM          -- from the signal to the exit.
Fleet, PostgreSQL: --fleet-mailboxes fresh mailboxes with --fleet-messages messages each (the load
generator's mail), backfilled by 1, 2 and 3 `mailintake run` workers started together on a fresh
database each: each worker's share (its /metrics: messages recorded, bytes fetched) and the body
bytes Dovecot sent beyond one copy of each message (its per-session body_bytes on logout).
Prints the figures and rewrites the block between the mailboxes markers of BENCHMARKS.md.
Everything it created (mailboxes, fake-entra, databases, work dir) is removed when it ends.
"""

import argparse
import json
import math
import os
import random
import re
import shutil
import signal
import smtplib
import sqlite3
import statistics
import subprocess
import sys
import time
import urllib.request
from datetime import datetime, timezone
from email.message import EmailMessage

import run as bench

BEGIN = "<!-- mailboxes:begin (written by scripts/bench.sh --mailboxes; edits inside are overwritten) -->"
END = "<!-- mailboxes:end -->"
SECRET = "mailboxes-bench-secret"
TARGETS = {"rss_mib": 256, "commit_p99_s": 2.0, "http_ms": 200}


def client_id(i):
    return f"7a3c{i:04x}-5e1d-4b8a-9c2f-3d4e5f6a7b8c"


def start_fake_entra(work, groups):
    """One fake-entra with a client per identity, each with FullAccess to its group of mailboxes."""
    port = bench.free_port()
    conf = os.path.join(work, "fake-entra.toml")
    with open(conf, "w") as f:
        f.write(f'tenant_id = "{bench.ENV["MAILSTACK_TENANT_ID"]}"\ntenant_domains = ["helpdesk.test"]\n')
        for i, group in enumerate(groups):
            boxes = ", ".join(f'"{a}"' for a in group)
            f.write(f"""
[[clients]]
client_id = "{client_id(i)}"
display_name = "mailintake-mailboxes-bench-{i}"
secret = "{SECRET}"
app_roles = ["IMAP.AccessAsApp"]
mailboxes = [{boxes}]
""")
    binary = os.path.join(bench.REPO, "target", "debug", "fake-entra")
    log_path = os.path.join(work, "fake-entra.log")
    proc = subprocess.Popen([binary, "--listen", f"127.0.0.1:{port}", "--key", bench.ENV["MAILSTACK_ENTRA_KEY"],
                             "--config", conf], stdout=open(log_path, "w"), stderr=subprocess.STDOUT,
                            stdin=subprocess.DEVNULL)
    bench.wait_port(port)
    return proc, port, log_path


def token_requests(log_path):
    with open(log_path) as f:
        return sum(1 for line in f if "/oauth2/v2.0/token" in line and "-> 200" in line)


def config_text(db_url, entra_port, http_port, groups, extra="", mailbox_extra=""):
    env = bench.ENV
    out = [f'[database]\nurl = "{db_url}"\n\n[http]\nlisten = "127.0.0.1:{http_port}"\n{extra}']
    for i in range(len(groups)):
        out.append(f"""
[identities.app{i}]
flow = "client_credentials"
tenant = "{env['MAILSTACK_TENANT_ID']}"
client_id = "{client_id(i)}"
client_secret = {{ env = "BENCH_CLIENT_SECRET" }}
authority = "http://127.0.0.1:{entra_port}/{{tenant}}"
""")
    for i, group in enumerate(groups):
        for address in group:
            name = address.split("@")[0].split("-", 2)[2]
            out.append(f"""
[[mailboxes]]
name = "{name}"
address = "{address}"
identity = "app{i}"
dispose = "seen"
idle = true
max_new_tickets_per_sender_per_hour = 0
{mailbox_extra}
[mailboxes.imap]
host = "localhost"
port = {env['MAILSTACK_IMAPS_PORT']}
tls = "implicit"
ca_file = "{env['MAILSTACK_CA']}"
""")
    return "".join(out)


def run_env():
    env = dict(os.environ, BENCH_CLIENT_SECRET=SECRET)
    env.pop("RUST_LOG", None)
    if os.environ.get("BENCH_RUST_LOG"):
        env["RUST_LOG"] = os.environ["BENCH_RUST_LOG"]
    return env


def binary():
    return os.environ.get("BENCH_MAILINTAKE") or os.path.join(bench.REPO, "target", "release", "mailintake")


def proc_status(pid):
    """VmRSS and VmHWM of `pid` in KiB."""
    out = {}
    try:
        with open(f"/proc/{pid}/status") as f:
            for line in f:
                if line.startswith(("VmRSS:", "VmHWM:")):
                    out[line.split(":")[0]] = int(line.split()[1])
    except OSError:
        pass
    return out


def imap_connections(pid, port):
    """Established TCP connections of `pid` to the IMAPS port (from its fds and /proc/net/tcp)."""
    inodes = set()
    try:
        for fd in os.listdir(f"/proc/{pid}/fd"):
            try:
                target = os.readlink(f"/proc/{pid}/fd/{fd}")
            except OSError:
                continue
            if target.startswith("socket:["):
                inodes.add(target[8:-1])
    except OSError:
        return 0
    n = 0
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        try:
            with open(table) as f:
                next(f)
                for line in f:
                    cols = line.split()
                    remote_port = int(cols[2].split(":")[1], 16)
                    if cols[3] == "01" and remote_port == port and cols[9] in inodes:
                        n += 1
        except OSError:
            pass
    return n


def http_get(url, timeout=30):
    t0 = time.monotonic()
    with urllib.request.urlopen(url, timeout=timeout) as r:
        body = r.read()
    return time.monotonic() - t0, body


def metric_samples(text, name):
    """{labels: value} of one metric family's samples."""
    out = {}
    for line in text.splitlines():
        if line.startswith(name + "{") or line.startswith(name + " "):
            key, _, value = line.rpartition(" ")
            out[key[len(name):]] = float(value)
    return out


def percentile(values, p):
    s = sorted(values)
    return s[max(0, math.ceil(p / 100 * len(s)) - 1)]


def wait_until(what, check, timeout, every=0.2):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if check():
            return
        time.sleep(every)
    raise RuntimeError(f"timed out after {timeout} s waiting for {what}")


def stop(proc, timeout=60):
    """SIGTERM, then the seconds until the process exited."""
    t0 = time.monotonic()
    proc.send_signal(signal.SIGTERM)
    try:
        proc.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()
        return None
    return time.monotonic() - t0


def count_logins(offset, addresses):
    """Dovecot's IMAP logins of `addresses` logged after `offset`: a session whose logout line
    (with its body_bytes) is missing from the log shows as a login more than logouts."""
    wanted = set(addresses)
    with open(os.path.join(bench.ENV["MAILSTACK_DIR"], "dovecot", "dovecot.log"), "rb") as f:
        f.seek(offset)
        text = f.read().decode("utf-8", "replace")
    return sum(1 for m in re.finditer(r"imap-login: Info: Login: user=<([^>]+)>", text) if m.group(1) in wanted)


def connected(addresses):
    """Which of `addresses` Dovecot still has an IMAP session of (`doveadm who`)."""
    out = bench.sh("doveadm", "-c", os.path.join(bench.ENV["MAILSTACK_DIR"], "dovecot", "dovecot.conf"),
                   "who", "-1")
    users = {line.split()[0] for line in out.splitlines()[1:] if line.strip()}
    return users & set(addresses)


def groups_of(addresses, n_groups):
    n_groups = max(1, min(n_groups, len(addresses)))
    return [addresses[i::n_groups] for i in range(n_groups)]


# ---------------------------------------------------------------------------------------------
# one worker, many mailboxes

def lmtp_message(to, message_id, i):
    m = EmailMessage()
    m["From"] = f"Customer {i} <customer{i}@customer.test>"
    m["To"] = to
    m["Subject"] = f"Printer on floor {i % 9} is out of toner ({i})"
    m["Message-ID"] = f"<{message_id}>"
    m["Date"] = time.strftime("%a, %d %b %Y %H:%M:%S +0000", time.gmtime())
    m.set_content("Hello,\n\nthe printer on the second floor is out of toner again.\n\nRegards\n")
    return m


def one_worker(args, tag, work, res):
    addresses = [f"bench-{tag}-m{i:04d}@helpdesk.test" for i in range(args.mailboxes)]
    res["cleanup"] += addresses
    groups = groups_of(addresses, args.identities)
    entra, entra_port, entra_log = start_fake_entra(work, groups)
    res["procs"].append(entra)
    db_path = os.path.join(work, "one.db")
    http_port = bench.free_port()
    cfg = os.path.join(work, "one.toml")
    with open(cfg, "w") as f:
        f.write(config_text(f"sqlite://{db_path}", entra_port, http_port, groups))
    env = run_env()
    subprocess.run([binary(), "--config", cfg, "migrate"], check=True, env=env, capture_output=True)
    imaps = int(bench.ENV["MAILSTACK_IMAPS_PORT"])
    la = bench.loadavg()
    bench.log(f"one worker: {len(addresses)} mailboxes on {len(groups)} identities (load {la})")
    t0 = time.monotonic()
    worker = subprocess.Popen([binary(), "--config", cfg, "run"], env=env, stdin=subprocess.DEVNULL,
                              stdout=subprocess.DEVNULL, stderr=open(os.path.join(work, "one.log"), "w"))
    res["procs"].append(worker)
    base = f"http://127.0.0.1:{http_port}"
    rss_trace = []
    progress = {"ok": 0, "conns": 0, "at": 0.0}

    def all_idle():
        if worker.poll() is not None:
            raise RuntimeError(f"mailintake exited with {worker.returncode} (see {work}/one.log)")
        rss_trace.append((round(time.monotonic() - t0, 1), proc_status(worker.pid).get("VmRSS", 0)))
        conns = imap_connections(worker.pid, imaps)
        try:
            _, body = http_get(f"{base}/metrics")
        except OSError:
            return False
        states = metric_samples(body.decode(), "mailintake_mailbox_state")
        ok = sum(1 for k, v in states.items() if 'state="ok"' in k and v == 1)
        if (ok, conns) != (progress["ok"], progress["conns"]) and time.monotonic() - progress["at"] > 10:
            bench.log(f"  {time.monotonic() - t0:.0f} s: {ok} swept, {conns} IMAP connections, "
                      f"RSS {rss_trace[-1][1] / 1024:.0f} MiB")
            progress.update(ok=ok, conns=conns, at=time.monotonic())
        return ok == len(addresses) and conns >= len(addresses)

    wait_until("every mailbox in IDLE", all_idle, timeout=max(300, len(addresses) * 0.6), every=1.0)
    res["idle_s"] = round(time.monotonic() - t0, 1)
    time.sleep(3)
    st = proc_status(worker.pid)
    res["rss_idle_kib"], res["tokens_at_idle"] = st.get("VmRSS"), token_requests(entra_log)
    bench.log(f"  all in IDLE after {res['idle_s']} s, RSS {st.get('VmRSS', 0) / 1024:.0f} MiB, "
              f"{res['tokens_at_idle']} token requests")

    # Deliveries over LMTP into random mailboxes.
    rng = random.Random(args.mailboxes)
    db = sqlite3.connect(f"file:{db_path}?mode=ro", uri=True, timeout=5)
    delivered, committed = {}, {}
    lmtp = smtplib.LMTP("127.0.0.1", int(bench.ENV["MAILSTACK_LMTP_PORT"]), timeout=30)
    bench.log(f"  {args.deliveries} messages over LMTP at {args.rate}/s into random mailboxes")
    start = time.monotonic()
    next_poll = 0.0

    def poll_db():
        try:
            rows = db.execute("SELECT message_id FROM messages WHERE direction = 'inbound'").fetchall()
        except sqlite3.Error:
            return
        now = time.time()
        for (mid,) in rows:
            committed.setdefault(mid, now)

    for i in range(args.deliveries):
        due = start + i / args.rate
        while time.monotonic() < due:
            if time.monotonic() >= next_poll:
                poll_db()
                next_poll = time.monotonic() + 0.02
            time.sleep(0.002)
        to = rng.choice(addresses)
        mid = f"mb-{tag}-{i}@customer.test"
        lmtp.send_message(lmtp_message(to, mid, i), to_addrs=[to])
        delivered[mid] = time.time()
    lmtp.quit()

    def all_committed():
        poll_db()
        return all(m in committed for m in delivered)

    wait_until("every delivered message committed", all_committed, timeout=120, every=0.02)
    db.close()
    lat = [committed[m] - t for m, t in delivered.items()]
    res["commit"] = {"n": len(lat), "p50": percentile(lat, 50), "p90": percentile(lat, 90),
                     "p99": percentile(lat, 99), "max": max(lat)}
    bench.log(f"  commit p50 {res['commit']['p50'] * 1000:.0f} ms, p99 {res['commit']['p99'] * 1000:.0f} ms")
    time.sleep(2)

    # The status page and /metrics, once idle.
    for path in ("/", "/metrics"):
        times, size = [], 0
        for _ in range(args.http_requests):
            took, body = http_get(base + path)
            times.append(took)
            size = len(body)
        res["http"][path] = {"median_ms": statistics.median(times) * 1000, "max_ms": max(times) * 1000,
                             "bytes": size, "n": len(times)}
        bench.log(f"  GET {path}: median {res['http'][path]['median_ms']:.1f} ms, max "
                  f"{res['http'][path]['max_ms']:.1f} ms, {size} bytes")
    _, body = http_get(base + "/metrics")
    text = body.decode()
    res["series"] = sum(1 for line in text.splitlines() if line and not line.startswith("#"))
    res["tokens_obtained_metric"] = sum(metric_samples(text, "mailintake_tokens_obtained_total").values())
    res["logins"] = sum(metric_samples(text, "mailintake_imap_logins_total").values())
    st = proc_status(worker.pid)
    res["rss_peak_kib"], res["rss_end_kib"] = st.get("VmHWM"), st.get("VmRSS")
    res["tokens"] = token_requests(entra_log)
    res["sigterm_s"] = stop(worker)
    res["rss_trace"] = rss_trace[::max(1, len(rss_trace) // 40)]
    bench.log(f"  peak RSS {res['rss_peak_kib'] / 1024:.0f} MiB; SIGTERM exit in {res['sigterm_s']:.1f} s")
    stop(entra, 10)


# ---------------------------------------------------------------------------------------------
# the fleet on PostgreSQL

def fleet(args, tag, work, res):
    counts = [int(w) for w in args.workers.split(",")]
    per_round = {w: [f"bench-{tag}-w{w}-f{i:03d}@helpdesk.test" for i in range(args.fleet_mailboxes)]
                 for w in counts}
    everyone = [a for boxes in per_round.values() for a in boxes]
    res["cleanup"] += everyone
    bench.log(f"fleet: {len(everyone)} mailboxes x {args.fleet_messages} messages (load generator)")
    manifest = os.path.join(work, "fleet-manifest.json")
    summary = json.loads(bench.sh(sys.executable, os.path.join(bench.HERE, "loadgen.py"), "--count",
                                  str(args.fleet_messages), "--seed", "17", "--quarantine-limit",
                                  str(bench.QUARANTINE_LIMIT), "--manifest", manifest,
                                  "--mail-root", bench.ENV["MAILSTACK_MAIL_ROOT"], *everyone))
    res["fleet_corpus"] = {k: summary[k] for k in ("count", "bytes", "fetchable_count", "fetchable_bytes",
                                                   "oversize_count")}
    groups_all = groups_of(everyone, args.identities)
    entra, entra_port, entra_log = start_fake_entra(work, groups_all)
    res["procs"].append(entra)
    env = run_env()
    for w in counts:
        boxes = per_round[w]
        db = f"mailintake_bench_{tag}_w{w}"
        bench.psql("postgres", f"CREATE DATABASE {db}")
        res["pg_dbs"].append(db)
        url = f"{bench.PG_URL_BASE}/{db}?{bench.PG_PARAMS}"
        # Every identity is declared (numbered as in the fake Entra ID); the round's mailboxes only.
        round_boxes = set(boxes)
        groups = [[a for a in g if a in round_boxes] for g in groups_all]
        ports = [bench.free_port() for _ in range(w)]
        cfgs = []
        for k in range(w):
            cfg = os.path.join(work, f"fleet-w{w}-{k}.toml")
            with open(cfg, "w") as f:
                f.write(config_text(url, entra_port, ports[k], groups,
                                    mailbox_extra=f"max_message_bytes = {bench.QUARANTINE_LIMIT}\n"))
            cfgs.append(cfg)
        subprocess.run([binary(), "--config", cfgs[0], "migrate"], check=True, env=env, capture_output=True)
        off = bench.dovecot_log_offset()
        la = bench.loadavg()
        bench.log(f"  {w} worker(s): {len(boxes)} mailboxes (load {la})")
        t0 = time.monotonic()
        procs = [subprocess.Popen([binary(), "--config", cfg, "run"], env=env, stdin=subprocess.DEVNULL,
                                  stdout=subprocess.DEVNULL,
                                  stderr=open(os.path.join(work, f"fleet-w{w}-{k}.log"), "w"))
                 for k, cfg in enumerate(cfgs)]
        res["procs"] += procs
        want = len(boxes) * args.fleet_messages

        def recorded():
            for p in procs:
                if p.poll() is not None:
                    raise RuntimeError(f"a worker exited with {p.returncode} (see {work})")
            return int(bench.psql(db, "SELECT count(*) FROM imap_messages").strip()) >= want

        wait_until(f"{want} messages recorded", recorded, timeout=900, every=0.5)
        took = time.monotonic() - t0
        time.sleep(2)
        shares = []
        for port in ports:
            _, body = http_get(f"http://127.0.0.1:{port}/metrics")
            text = body.decode()
            shares.append({
                "messages": int(sum(metric_samples(text, "mailintake_messages_total").values())),
                "bytes": int(sum(metric_samples(text, "mailintake_fetched_bytes_total").values())),
                "logins": int(sum(metric_samples(text, "mailintake_imap_logins_total").values())),
            })
        exits = [stop(p) for p in procs]
        # The logout lines (`body_bytes=`) of every session, once Dovecot has none of them left.
        wait_until("the round's IMAP sessions to end", lambda: not connected(boxes), timeout=60, every=0.5)
        time.sleep(0.5)
        sessions = [s for a in boxes for s in bench.dovecot_sessions(off, a)]
        logins = count_logins(off, boxes)
        body_bytes = sum(s.get("body_bytes", 0) for s in sessions)
        rows = int(bench.psql(db, "SELECT count(*) FROM imap_messages").strip())
        distinct = int(bench.psql(db, "SELECT count(DISTINCT (mailbox, uid)) FROM imap_messages").strip())
        once = len(boxes) * summary["fetchable_bytes"]
        res["fleet"].append({"workers": w, "mailboxes": len(boxes), "messages": want, "seconds": round(took, 1),
                             "shares": shares, "rows": rows, "distinct": distinct, "sessions": len(sessions), "logins": logins,
                             "body_bytes": body_bytes, "once_bytes": once, "twice_bytes": body_bytes - once,
                             "sigterm_s": exits})
        bench.log(f"    {took:.1f} s; shares {[s['messages'] for s in shares]}; body bytes beyond one copy "
                  f"{body_bytes - once}")
    stop(entra, 10)


# ---------------------------------------------------------------------------------------------

def render(res):
    m = res["machine"]
    lines = [f"Run {res['started']}; machine: {m['nproc']} × {m['cpu']}, {m['mem_gib']} GiB RAM, Linux "
             f"{m['kernel']}; Dovecot {m['dovecot']}, PostgreSQL {m['postgres']}, {m['rustc']}; mailintake at "
             f"{m['git']}" + (f" (binary {res['binary']})" if res.get("binary") else "")
             + f"; load average {res['load_before']} before, {res['load_after']} after.", ""]
    if "idle_s" in res:
        mib = lambda kib: f"{kib / 1024:,.0f} MiB"
        peak = res["rss_peak_kib"] / 1024
        verdict = lambda ok: "met" if ok else "MISSED"
        c = res["commit"]
        lines += [f"One worker, SQLite, IDLE: {res['mailboxes']:,} mailboxes on {res['identities']} identities "
                  f"(client credentials, one fake Entra ID), default `logins_per_second` (10 per server).", "",
                  "| figure | value | target |", "| --- | ---: | --- |",
                  f"| peak RSS (VmHWM) | {mib(res['rss_peak_kib'])} | ≤ {TARGETS['rss_mib']} MiB: "
                  f"{verdict(peak <= TARGETS['rss_mib'])} |",
                  f"| RSS once all are in IDLE | {mib(res['rss_idle_kib'])} "
                  f"({res['rss_idle_kib'] / res['mailboxes']:.0f} KiB a mailbox) | |",
                  f"| time until all are in IDLE | {res['idle_s']:.0f} s | |",
                  f"| token requests | {res['tokens']} ({res['logins']:.0f} IMAP logins) | one per identity "
                  f"({res['identities']}): {verdict(res['tokens'] <= res['identities'])} |",
                  f"| delivery (LMTP 250) → committed ticket, {c['n']} messages at {res['rate']:g}/s | p50 "
                  f"{c['p50'] * 1000:.0f} ms, p90 {c['p90'] * 1000:.0f} ms, p99 {c['p99'] * 1000:.0f} ms, max "
                  f"{c['max'] * 1000:.0f} ms | p99 ≤ {TARGETS['commit_p99_s']:g} s: "
                  f"{verdict(c['p99'] <= TARGETS['commit_p99_s'])} |"]
        for path in ("/", "/metrics"):
            h = res["http"][path]
            lines.append(f"| `GET {path}`, {h['n']} requests ({h['bytes'] / 1000:,.0f} kB) | median "
                         f"{h['median_ms']:.0f} ms, max {h['max_ms']:.0f} ms | ≤ {TARGETS['http_ms']} ms: "
                         f"{verdict(h['max_ms'] <= TARGETS['http_ms'])} |")
        lines += [f"| `/metrics` series | {res['series']:,} | |",
                  f"| SIGTERM → exit | {res['sigterm_s']:.1f} s | |", ""]
    if res["fleet"]:
        lines += [f"Fleet, PostgreSQL: a backfill of {res['fleet'][0]['mailboxes']} mailboxes × "
                  f"{res['fleet_messages']} messages (the load generator's mail, {res['fleet'][0]['once_bytes'] / 1e6:.0f} MB "
                  f"to download a round), fresh mailboxes and database per round, the workers started together "
                  f"(default `[fleet]`: 30 s TTL, 5 s acquisition interval).", "",
                  "| workers | wall time | messages per worker | bytes fetched per worker | body bytes beyond one copy | SIGTERM → exit |",
                  "| ---: | ---: | --- | --- | ---: | --- |"]
        for f in res["fleet"]:
            messages = " / ".join(str(s["messages"]) for s in f["shares"])
            fetched = " / ".join("%.1f MB" % (s["bytes"] / 1e6) for s in f["shares"])
            exits = " / ".join("%.1f s" % e if e is not None else "killed" for e in f["sigterm_s"])
            missing = f["logins"] - f["sessions"]
            twice = f"{f['twice_bytes']:,}" + (f" ({missing} of {f['logins']} sessions without a logout line)"
                                               if missing else f" ({f['sessions']} sessions)")
            lines.append(f"| {f['workers']} | {f['seconds']:.0f} s | {messages} | {fetched} | {twice} | {exits} |")
        lines.append("")
        lines.append("Body bytes beyond one copy: Dovecot's per-session `body_bytes` summed over every session "
                     "of the round's mailboxes, minus the bytes of every downloadable message once; a session whose "
                     "logout line Dovecot did not write counts nothing (so the figure can be negative).")
    return "\n".join(lines).rstrip()


def write_report(text):
    path = os.path.join(bench.REPO, "BENCHMARKS.md")
    doc = open(path).read()
    block = f"{BEGIN}\n{text}\n{END}"
    if BEGIN in doc and END in doc:
        doc = doc[:doc.index(BEGIN)] + block + doc[doc.index(END) + len(END):]
    else:
        doc = doc.rstrip() + "\n\n## Many mailboxes in one worker, and a fleet (issue 17)\n\n" + block + "\n"
    with open(path, "w") as f:
        f.write(doc)
    bench.log(f"wrote {path}")


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--mailboxes", type=int, default=1000)
    ap.add_argument("--identities", type=int, default=10)
    ap.add_argument("--deliveries", type=int, default=200)
    ap.add_argument("--rate", type=float, default=5.0, help="deliveries per second")
    ap.add_argument("--http-requests", type=int, default=20)
    ap.add_argument("--fleet-mailboxes", type=int, default=60)
    ap.add_argument("--fleet-messages", type=int, default=50)
    ap.add_argument("--workers", default="1,2,3")
    ap.add_argument("--skip-one", action="store_true", help="no one-worker run")
    ap.add_argument("--skip-fleet", action="store_true", help="no fleet runs")
    ap.add_argument("--no-report", action="store_true", help="do not rewrite BENCHMARKS.md")
    ap.add_argument("--keep", action="store_true", help="keep the work dir (logs, databases)")
    args = ap.parse_args()
    bench.load_env()
    tag = f"{os.getpid()}"
    work = os.path.join(os.environ.get("TMPDIR", "/tmp"), f"mailintake-mailboxes-{tag}")
    os.makedirs(work)
    res = {"started": datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M UTC"), "machine": bench.machine(),
           "load_before": bench.loadavg(), "mailboxes": args.mailboxes, "identities": args.identities,
           "rate": args.rate, "fleet_messages": args.fleet_messages, "http": {}, "fleet": [],
           "binary": os.environ.get("BENCH_MAILINTAKE"), "cleanup": [], "procs": [], "pg_dbs": []}

    def cleanup():
        for proc in res["procs"]:
            if proc.poll() is None:
                proc.kill()
                proc.wait()
        for db in res["pg_dbs"]:
            try:
                bench.psql("postgres", f"DROP DATABASE IF EXISTS {db} WITH (FORCE)")
            except RuntimeError as e:
                bench.log(f"could not drop {db}: {e}")
        bench.clean_mailboxes(res["cleanup"])
        if not args.keep:
            shutil.rmtree(work, ignore_errors=True)

    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    try:
        if not args.skip_one:
            one_worker(args, tag, work, res)
        if not args.skip_fleet:
            fleet(args, tag, work, res)
        res["load_after"] = bench.loadavg()
        with open(os.path.join(work, "mailboxes.json"), "w") as f:
            json.dump({k: v for k, v in res.items() if k not in ("procs",)}, f, indent=1)
        text = render(res)
        print(text)
        if not args.no_report:
            write_report(text)
        return 0
    finally:
        cleanup()


if __name__ == "__main__":
    sys.exit(main())
