#!/usr/bin/env python3
"""py_ingest.py -- the baseline: a straightforward helpdesk fetcher in Python's standard library.

    py_ingest.py --host localhost --port 14993 --ca CA.pem --user ADDRESS --password PW \
                 --db FILE.sqlite [--max-bytes N] [--commit-every 100]

What many helpdesk fetchers amount to: imaplib over TLS, LOGIN, SELECT INBOX, list the unseen
messages with their sizes (oversized ones are recorded without downloading, as mailintake does),
then per message `UID FETCH n BODY.PEEK[]`, parse with the `email` package (its default compat32
policy -- email.policy.default is ~5x slower on this data -- RFC 2047 headers decoded, text and HTML
bodies decoded from their charsets, attachments base64-decoded), insert a ticket row and its
attachments into SQLite, commit every --commit-every messages (WAL, synchronous=FULL, like
mailintake) and only then mark that group \\Seen. Prints one JSON line with what it did.
"""

import argparse
import email
from email.header import decode_header, make_header
import hashlib
import imaplib
import json
import re
import sqlite3
import ssl
import time

SCHEMA = """
CREATE TABLE IF NOT EXISTS tickets (
    id INTEGER PRIMARY KEY,
    message_id TEXT UNIQUE,
    in_reply_to TEXT,
    subject TEXT, from_addr TEXT, to_addr TEXT, date TEXT,
    body_text TEXT, body_html TEXT, headers TEXT, size INTEGER, uid INTEGER
);
CREATE TABLE IF NOT EXISTS attachments (
    id INTEGER PRIMARY KEY, ticket_id INTEGER REFERENCES tickets(id),
    filename TEXT, content_type TEXT, size INTEGER, sha256 TEXT, content BLOB
);
CREATE TABLE IF NOT EXISTS quarantine (uid INTEGER PRIMARY KEY, size INTEGER, reason TEXT);
"""

def decode(payload, charset):
    try:
        return payload.decode(charset or "us-ascii", "replace")
    except LookupError:
        return payload.decode("latin-1")


def header_str(value):
    """An RFC 2047 header value as text (what the ticket shows)."""
    if value is None:
        return None
    try:
        return str(make_header(decode_header(value)))
    except (LookupError, ValueError, UnicodeDecodeError):
        return str(value)


SIZE_RE = re.compile(rb"UID (\d+) RFC822\.SIZE (\d+)|RFC822\.SIZE (\d+) UID (\d+)")


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--host", default="localhost")
    ap.add_argument("--port", type=int, required=True)
    ap.add_argument("--ca", required=True)
    ap.add_argument("--user", required=True)
    ap.add_argument("--password", required=True)
    ap.add_argument("--db", required=True)
    ap.add_argument("--max-bytes", type=int, default=25 * 1024 * 1024)
    ap.add_argument("--commit-every", type=int, default=100)
    args = ap.parse_args()

    t0 = time.monotonic()
    db = sqlite3.connect(args.db)
    db.execute("PRAGMA journal_mode=WAL")
    db.execute("PRAGMA synchronous=FULL")
    db.executescript(SCHEMA)
    db.commit()

    ctx = ssl.create_default_context(cafile=args.ca)
    imap = imaplib.IMAP4_SSL(args.host, args.port, ssl_context=ctx)
    imap.login(args.user, args.password)
    imap.select("INBOX")
    typ, data = imap.uid("SEARCH", None, "UNSEEN")
    uids = [int(x) for x in data[0].split()]
    sizes = {}
    if uids:
        typ, data = imap.uid("FETCH", "1:*", "(UID RFC822.SIZE)")
        for item in data:
            line = item[0] if isinstance(item, tuple) else item
            m = SIZE_RE.search(line or b"")
            if m:
                uid, size = (m.group(1), m.group(2)) if m.group(1) else (m.group(4), m.group(3))
                sizes[int(uid)] = int(size)

    n_tickets = n_dup = n_quar = 0
    fetched_bytes = 0
    pending = []

    def flush():
        db.commit()
        if pending:
            imap.uid("STORE", ",".join(map(str, pending)), "+FLAGS.SILENT", r"(\Seen)")
            pending.clear()

    for uid in uids:
        size = sizes.get(uid, 0)
        if size > args.max_bytes:
            db.execute("INSERT OR IGNORE INTO quarantine VALUES (?, ?, 'too large')", (uid, size))
            n_quar += 1
        else:
            typ, data = imap.uid("FETCH", str(uid), "(BODY.PEEK[])")
            raw = data[0][1]
            fetched_bytes += len(raw)
            msg = email.message_from_bytes(raw)  # compat32, the default
            text = html = None
            attachments = []
            for part in msg.walk():
                if part.is_multipart():
                    continue
                ctype = part.get_content_type()
                payload = part.get_payload(decode=True) or b""
                if part.get_filename() or ctype not in ("text/plain", "text/html"):
                    attachments.append((part.get_filename(), ctype, payload))
                elif ctype == "text/plain" and text is None:
                    text = decode(payload, part.get_content_charset())
                elif ctype == "text/html" and html is None:
                    html = decode(payload, part.get_content_charset())
            headers = "".join(f"{k}: {v}\n" for k, v in msg.items())
            cur = db.execute(
                "INSERT OR IGNORE INTO tickets (message_id, in_reply_to, subject, from_addr, to_addr, date, "
                "body_text, body_html, headers, size, uid) VALUES (?,?,?,?,?,?,?,?,?,?,?)",
                ((msg.get("Message-ID") or "").strip().strip("<>") or None, msg.get("In-Reply-To"),
                 header_str(msg.get("Subject")), header_str(msg.get("From")), header_str(msg.get("To")),
                 msg.get("Date"), text, html, headers, len(raw), uid))
            if cur.rowcount == 0:
                n_dup += 1
            else:
                n_tickets += 1
                ticket_id = cur.lastrowid
                for filename, ctype, content in attachments:
                    db.execute(
                        "INSERT INTO attachments (ticket_id, filename, content_type, size, sha256, content) "
                        "VALUES (?,?,?,?,?,?)",
                        (ticket_id, header_str(filename), ctype, len(content),
                         hashlib.sha256(content).hexdigest(), content))
        pending.append(uid)
        if len(pending) >= args.commit_every:
            flush()
    flush()
    imap.logout()
    db.close()
    print(json.dumps({"listed": len(uids), "tickets": n_tickets, "duplicates": n_dup,
                      "quarantined": n_quar, "fetched_bytes": fetched_bytes,
                      "seconds": round(time.monotonic() - t0, 3)}))


if __name__ == "__main__":
    main()
