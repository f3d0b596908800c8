#!/usr/bin/env python3
"""loadgen.py -- fill Dovecot inboxes of the local mail stack with a realistic helpdesk inbox.

    loadgen.py [--count N] [--seed S] [--quarantine-limit BYTES] [--jobs J] [--manifest FILE]
               ADDRESS [ADDRESS ...]
    loadgen.py --clean ADDRESS [ADDRESS ...]

Every ADDRESS gets the same N messages (deterministic from the seed; independent of --jobs):
  * ~93 %  5-50 KB: plain text or text + HTML, sometimes a small logo/screenshot attachment
  * ~6.6 % 50-500 KB: screenshots, PDFs, log excerpts as attachments
  * ~0.4 % 1-10 MB attachments (zip, pdf, mp4)
  * every 2,000th message (5 per 10,000) is above --quarantine-limit (default 12 MiB), so a
    benchmark configured with that limit must quarantine it without downloading it
  * charsets: UTF-8 (RFC 2047 B/Q subjects, emoji), ISO-8859-1, windows-1252, ISO-8859-15,
    KOI8-R, ISO-2022-JP, US-ASCII; quoted-printable, base64, 8bit and 7bit bodies
  * ~30 % are replies to an earlier message (Re: subject, In-Reply-To, References, quoted text);
    ~0.5 % are exact re-deliveries of an earlier message (same Message-ID and bytes)

How it is fast: messages are rendered once (in parallel, one process per core) as Maildir files
into a staging directory next to the mail root, then hard-linked into each ADDRESS's Maildir `cur/`
(names carry S=/W= sizes, so Dovecot never reads a file to learn its size) and Dovecot indexes the
folder once (`doveadm mailbox status`), so the first IMAP client does not pay for the initial sync.
Maildirs live in $MAILSTACK_MAIL_ROOT/<domain>/<local> and are owned by the `mailstack` user.
Only the given addresses are touched; --clean deletes their Maildirs (use it only on your own).
"""

import argparse
import base64
import binascii
import functools
import grp
import hashlib
import json
import multiprocessing
import os
import pwd
import random
import shutil
import subprocess
import sys
import time
from email.header import Header
from email.utils import format_datetime
from datetime import datetime, timezone

VMAIL_USER = "mailstack"
BASE_TIME = 1748736000  # 2025-06-01T00:00:00Z; message i arrives BASE_TIME + i * 37 s
B64_LINE = 76

# ---------------------------------------------------------------------------------------------
# Text material. Paragraphs are built from these at start-up with the seeded RNG.

WORDS = {
    "en": (
        "the printer on floor three stopped working again after the update yesterday and nobody "
        "can print invoices please advise our VPN client keeps disconnecting every ten minutes "
        "when I am working from home I attached a screenshot of the error message password reset "
        "does not arrive in my inbox could you check the account is not locked thanks in advance "
        "best regards kind ticket laptop battery replacement warranty order number delivery "
        "shipment tracking refund invoice overdue payment reminder meeting room projector cable "
        "license renewal subscription outlook calendar shared mailbox permission access denied"
    ).split(),
    "de": (
        "der Drucker im dritten Stock funktioniert seit dem Update gestern nicht mehr und "
        "niemand kann Rechnungen drucken bitte um Rückmeldung unser VPN trennt sich alle zehn "
        "Minuten wenn ich von zu Hause arbeite Passwort zurücksetzen funktioniert nicht größer "
        "Grüße Überweisung Lieferung verspätet Bestellung Rechnung fällig Schlüssel Büro "
        "Straße Gebäude Zugang verweigert Lizenz Verlängerung freundlichen mit"
    ).split(),
    "fr": (
        "l'imprimante du troisième étage ne fonctionne plus depuis la mise à jour d'hier et "
        "personne ne peut imprimer les factures merci de votre réponse le VPN se déconnecte "
        "toutes les dix minutes quand je travaille à la maison réinitialisation du mot de passe "
        "reçu commande livraison retardée remboursement échéance cordialement élève façade "
        "garçon où déjà très bientôt accès refusé licence"
    ).split(),
    "es": (
        "la impresora del tercer piso dejó de funcionar después de la actualización de ayer y "
        "nadie puede imprimir facturas por favor ayúdenos la conexión VPN se corta cada diez "
        "minutos contraseña señor pedido envío reembolso año mañana información técnica "
        "atención al cliente saludos cordiales acceso denegado"
    ).split(),
    "ru": (
        "принтер на третьем этаже перестал работать после вчерашнего обновления и никто не "
        "может печатать счета пожалуйста помогите VPN отключается каждые десять минут когда я "
        "работаю из дома пароль заказ доставка возврат денег счёт оплата спасибо с уважением"
    ).split(),
    "ja": (
        "三階のプリンターが 昨日の 更新後に 動かなく なりました 請求書を 印刷 できません "
        "ご確認 お願いします VPN が 十分ごとに 切断 されます パスワード 注文 配送 返金 "
        "よろしく お願い いたします"
    ).split(),
}
# The windows-1252 extras (typographic quotes, dash, euro) that ISO-8859-1 lacks.
CP1252_EXTRAS = ["“quoted”", "it’s", "– 25 €", "…", "‘ok’"]
EMOJI = ["🙂", "👍", "🔥", "✅", "📎"]

FIRST = ["Anna", "Bob", "Chloé", "Dieter", "Emma", "François", "Grace", "Hans", "Inés", "Jürgen",
         "Kenji", "Laura", "Miguel", "Nina", "Olga", "Pavel", "Quentin", "Rosa", "Søren", "Yuki"]
LAST = ["Smith", "Müller", "García", "Dubois", "Ivanova", "Tanaka", "O'Brien", "Nowak",
        "Rossi", "Jensen", "Schäfer", "López", "Martin", "Petrov", "Suzuki", "Brown"]
DOMAINS = ["customer.test", "example.com", "example.org", "acme-corp.example", "gmail.example",
           "outlook.example", "kunde.example", "client.example"]
SUBJECTS = {
    "en": ["Printer not working", "VPN keeps disconnecting", "Password reset email missing",
           "Invoice {n} overdue?", "Refund for order {n}", "Cannot access shared mailbox",
           "Laptop battery replacement", "Meeting room projector broken", "License renewal {n}"],
    "de": ["Drucker funktioniert nicht", "Rechnung {n} – Rückfrage", "Lieferung verspätet",
           "Zugang verweigert", "Passwort zurücksetzen", "Bestellung {n} größer als erwartet"],
    "fr": ["Imprimante en panne", "Facture {n} – échéance", "Livraison retardée",
           "Accès refusé à la boîte partagée", "Remboursement commande {n}"],
    "es": ["La impresora no funciona", "Factura {n} pendiente", "Envío retrasado",
           "Reembolso del pedido {n}", "Contraseña olvidada"],
    "ru": ["Принтер не работает", "Счёт {n} не оплачен", "Возврат заказа {n}", "Нет доступа"],
    "ja": ["プリンターが動きません", "請求書 {n} について", "注文 {n} の返金", "パスワード再設定"],
}
# (charset, languages it can carry, body transfer encoding, share)
CHARSETS = [
    ("utf-8", ["en", "de", "fr", "es", "ru", "ja"], "quoted-printable", 0.30),
    ("utf-8", ["en", "de", "fr", "es", "ru", "ja"], "base64", 0.12),
    ("utf-8", ["en", "de", "fr"], "8bit", 0.10),
    ("iso-8859-1", ["en", "de", "fr", "es"], "quoted-printable", 0.16),
    ("iso-8859-1", ["de", "fr", "es"], "8bit", 0.04),
    ("windows-1252", ["en", "de", "fr", "es"], "quoted-printable", 0.10),
    ("windows-1252", ["en", "de"], "8bit", 0.03),
    ("iso-8859-15", ["de", "fr"], "quoted-printable", 0.04),
    ("koi8-r", ["ru"], "8bit", 0.03),
    ("iso-2022-jp", ["ja"], "7bit", 0.03),
    ("us-ascii", ["en"], "7bit", 0.05),
]
SMALL_ATTACH = [("image/png", "logo.png"), ("image/jpeg", "screenshot.jpg"),
                ("application/pdf", "invoice.pdf"), ("text/plain", "error.log")]
MEDIUM_ATTACH = [("image/png", "screenshot-{n}.png"), ("application/pdf", "Rechnung_{n}.pdf"),
                 ("image/jpeg", "IMG_{n}.jpg"), ("application/vnd.openxmlformats-officedocument."
                  "spreadsheetml.sheet", "report-{n}.xlsx")]
LARGE_ATTACH = [("application/zip", "logs-{n}.zip"), ("application/pdf", "scan-{n}.pdf"),
                ("video/mp4", "screen-recording-{n}.mp4"), ("application/octet-stream", "dump-{n}.bin")]


def wrap(text, width=72):
    """Wraps at ~width columns like mail clients do."""
    lines, line, n = [], [], 0
    for w in text.split(" "):
        line.append(w)
        n += len(w) + 1
        if n > width:
            lines.append(" ".join(line))
            line, n = [], 0
    if line:
        lines.append(" ".join(line))
    return "\n".join(lines)


class Material:
    """Everything shared by all messages: paragraphs per language and a pool of base64 lines."""

    def __init__(self, seed, pool_bytes):
        rng = random.Random(f"material-{seed}")
        self.paragraphs = {}
        for lang, words in WORDS.items():
            paras = []
            sep = "" if lang == "ja" else " "
            for _ in range(120):
                sentences = []
                for _ in range(rng.randint(3, 7)):
                    n = rng.randint(6, 16)
                    s = sep.join(rng.choice(words) for _ in range(n))
                    sentences.append(s[:1].upper() + s[1:] + ("。" if lang == "ja" else "."))
                paras.append(wrap(sep.join(sentences)))
            self.paragraphs[lang] = paras
        # Incompressible attachment content (like JPEG/PDF/zip), base64 in 76-column lines.
        raw = rng.randbytes(pool_bytes // 4 * 3)
        enc = base64.b64encode(raw)
        self.b64_lines = len(enc) // B64_LINE
        self.b64 = b"\n".join(enc[i * B64_LINE:(i + 1) * B64_LINE] for i in range(self.b64_lines)) + b"\n"
        # A shared company logo: the same bytes in many messages (real inboxes dedupe these).
        self.logo = self.slice(0, 4200)
        self.logo_lines = 4200 // (B64_LINE + 1)

    def slice(self, start_line, nbytes):
        """About nbytes of base64 text starting at line start_line (wrapping around the pool)."""
        lines = max(1, nbytes // (B64_LINE + 1))
        start_line %= self.b64_lines
        end_line = start_line + lines
        step = B64_LINE + 1
        if end_line <= self.b64_lines:
            return self.b64[start_line * step:end_line * step]
        out = [self.b64[start_line * step:]]
        rest = end_line - self.b64_lines
        while rest > 0:
            take = min(rest, self.b64_lines)
            out.append(self.b64[:take * step])
            rest -= take
        return b"".join(out)


MAT = None  # set in each process (inherited through fork)
ARGS = None


# ---------------------------------------------------------------------------------------------
# One message

def rng_for(i):
    return random.Random(ARGS.seed * 1_000_003 + i)


def pick_weighted(rng, table):
    x = rng.random() * sum(t[-1] for t in table)
    for t in table:
        x -= t[-1]
        if x <= 0:
            return t
    return table[-1]


@functools.lru_cache(maxsize=4096)
def meta(i):
    """The cheap identity of message i (sender, subject, ids, thread), computed without its body;
    replies look up their parent's meta."""
    rng = rng_for(i)
    u = rng.random()
    if i % 2000 == 1999:
        kind = "oversize"
    elif u < 0.004:
        kind = "large"
    elif u < 0.07:
        kind = "medium"
    else:
        kind = "small"
    charset, langs, cte, _ = pick_weighted(rng, CHARSETS)
    lang = rng.choice(langs)
    if charset == "utf-8" and lang in ("ru", "ja"):
        cte = "base64"  # what mailers choose for non-Latin UTF-8 text
    first, last = rng.choice(FIRST), rng.choice(LAST)
    domain = rng.choice(DOMAINS)
    local = f"{first}.{last}".lower().encode("ascii", "ignore").decode().replace("'", "")
    sender = (f"{first} {last}", f"{local}{rng.randint(1, 99)}@{domain}")
    mid = f"{i:07d}.{rng.getrandbits(48):012x}@{domain}"
    dup_of = None
    parent = None
    v = rng.random()
    if i > 10 and v < 0.005:
        dup_of = rng.randint(max(0, i - 300), i - 1)
    elif i > 10 and v < 0.305:
        parent = rng.randint(max(0, i - 500), i - 1)
    if parent is not None:
        p = meta(parent)
        subject = p["subject"] if p["subject"].startswith(("Re: ", "AW: ")) else "Re: " + p["subject"]
        refs = (p["refs"] + [p["mid"]])[-10:]
        # A reply keeps the thread's language and usually its charset.
        lang, charset, cte = p["lang"], p["charset"], p["cte"]
        sender = p["sender"] if rng.random() < 0.7 else sender
    else:
        subject = rng.choice(SUBJECTS[lang]).format(n=rng.randint(10000, 99999))
        if charset == "windows-1252" and rng.random() < 0.5:
            subject = subject + " – “urgent”"
        if charset.startswith("utf-8") and rng.random() < 0.15:
            subject = subject + " " + rng.choice(EMOJI)
        refs = []
    return {"i": i, "kind": kind, "charset": charset, "cte": cte, "lang": lang, "sender": sender,
            "mid": mid, "subject": subject, "refs": refs, "parent": parent, "dup_of": dup_of,
            "time": BASE_TIME + i * 37}


def encodable(text, charset):
    return text.encode(charset, "replace").decode(charset)


def body_text(rng, m, target):
    lang, charset = m["lang"], m["charset"]
    paras = MAT.paragraphs[lang]
    out = []
    size = 0
    greet = {"en": "Hello,", "de": "Hallo zusammen,", "fr": "Bonjour,", "es": "Hola,",
             "ru": "Здравствуйте,", "ja": "お世話になっております。"}[lang]
    out.append(greet)
    while size < target:
        p = rng.choice(paras)
        if charset == "windows-1252" and rng.random() < 0.3:
            p = p + "\n" + rng.choice(CP1252_EXTRAS)
        if charset == "utf-8" and rng.random() < 0.05:
            p = p + " " + rng.choice(EMOJI)
        out.append(p)
        size += len(p.encode("utf-8")) + 2
    if m["parent"] is not None:
        p = meta(m["parent"])
        when = format_datetime(datetime.fromtimestamp(p["time"], timezone.utc))
        quoted = "\n".join("> " + ln for ln in "\n\n".join(out[1:3]).split("\n"))
        out.append(f"On {when}, {p['sender'][0]} <{p['sender'][1]}> wrote:\n{quoted}")
    out.append("-- \n" + m["sender"][0])
    return encodable("\n\n".join(out) + "\n", charset)


def encode_body(text, charset, cte):
    raw = text.encode(charset)
    if cte == "quoted-printable":
        return binascii.b2a_qp(raw, istext=True).replace(b"\r\n", b"\n")
    if cte == "base64":
        enc = base64.b64encode(raw)
        return b"\n".join(enc[k:k + B64_LINE] for k in range(0, len(enc), B64_LINE)) + b"\n"
    return raw


def header_words(text, charset):
    """A header value: as is when ASCII, else RFC 2047 (B or Q, as the charset's mailers do)."""
    try:
        text.encode("ascii")
        return text
    except UnicodeEncodeError:
        cs = "utf-8" if charset in ("us-ascii",) else charset
        return Header(encodable(text, cs), cs).encode(maxlinelen=76)


def html_of(text):
    esc = text.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")
    paras = "".join(f"<p>{p.replace(chr(10), '<br>')}</p>\n" for p in esc.split("\n\n"))
    return ("<html><head><meta http-equiv=\"Content-Type\" content=\"text/html\"></head>"
            "<body style=\"font-family:Calibri,sans-serif\">\n" + paras + "</body></html>\n")


def attachment_part(boundary, ctype, filename, b64, inline_cid=None):
    disp = "inline" if inline_cid else "attachment"
    head = (f"--{boundary}\nContent-Type: {ctype}; name=\"{filename}\"\n"
            f"Content-Disposition: {disp}; filename=\"{filename}\"\n"
            "Content-Transfer-Encoding: base64\n")
    if inline_cid:
        head += f"Content-ID: <{inline_cid}>\n"
    return head.encode() + b"\n" + b64


def render(i):
    m = meta(i)
    if m["dup_of"] is not None:
        # A re-delivery: byte-identical to the original (Message-ID included).
        return render(m["dup_of"])
    rng = rng_for(i)
    rng.random()  # decouple from meta's draws
    rng.seed(rng.getrandbits(64) ^ 0x5EED)
    kind, charset, cte = m["kind"], m["charset"], m["cte"]
    hdr_cs = "utf-8" if charset == "us-ascii" else charset
    name, addr = m["sender"]
    date = format_datetime(datetime.fromtimestamp(m["time"] - rng.randint(5, 600), timezone.utc))
    headers = [
        f"Return-Path: <{addr}>",
        f"Received: from mx{rng.randint(1, 9)}.{addr.split('@')[1]} (mx.{addr.split('@')[1]} "
        f"[192.0.2.{rng.randint(1, 254)}])\n\tby mail.helpdesk.test with ESMTPS id {rng.getrandbits(40):010X}\n"
        f"\tfor <support@helpdesk.test>; {date}",
        f"From: {header_words(name, hdr_cs)} <{addr}>",
        "To: Helpdesk <support@helpdesk.test>",
        f"Subject: {header_words(m['subject'], hdr_cs)}",
        f"Date: {date}",
        f"Message-ID: <{m['mid']}>",
        "MIME-Version: 1.0",
    ]
    if rng.random() < 0.2:
        headers.append(f"Cc: {header_words(rng.choice(FIRST), hdr_cs)} <cc{rng.randint(1, 999)}@{addr.split('@')[1]}>")
    if m["parent"] is not None:
        p = meta(m["parent"])
        headers.append(f"In-Reply-To: <{p['mid']}>")
        headers.append("References: " + "\n ".join(f"<{r}>" for r in m["refs"] + [p["mid"]]))
    headers.append(f"X-Mailer: {rng.choice(['Microsoft Outlook 16.0', 'Apple Mail (2.3731)', 'Thunderbird 115.3', 'Roundcube Webmail/1.6'])}")

    target = {"small": int(2000 * 8 ** rng.random())}.get(kind, rng.randint(1000, 6000))
    text = body_text(rng, m, target)
    text_part_hdr = (f"Content-Type: text/plain; charset=\"{charset}\"\n"
                     f"Content-Transfer-Encoding: {cte}\n").encode()
    text_part = text_part_hdr + b"\n" + encode_body(text, charset, cte)
    want_html = rng.random() < 0.45
    attachments = []
    if kind == "small":
        if rng.random() < 0.25:
            ctype, fname = rng.choice(SMALL_ATTACH)
            if rng.random() < 0.4:
                attachments.append(("image/png", "logo.png", MAT.logo, "logo@helpdesk"))
            else:
                attachments.append((ctype, fname, MAT.slice(rng.getrandbits(32), rng.randint(3000, 15000)), None))
    else:
        if kind == "medium":
            lo, hi, table = 50_000, 500_000, MEDIUM_ATTACH
        elif kind == "large":
            lo, hi, table = 1_000_000, 10_000_000, LARGE_ATTACH
        else:
            lo, hi, table = int(ARGS.quarantine_limit * 1.05), int(ARGS.quarantine_limit * 1.4), LARGE_ATTACH
        size = int(lo * (hi / lo) ** rng.random())  # log-uniform
        n = rng.choice([1, 1, 1, 2])
        for k in range(n):
            ctype, fname = rng.choice(table)
            attachments.append((ctype, fname.format(n=rng.randint(100, 9999)),
                                MAT.slice(rng.getrandbits(32), size // n), None))
    bnd = f"----=_Part_{i}_{rng.getrandbits(32):08x}"
    if want_html:
        html = html_of(text)
        html_part = (f"Content-Type: text/html; charset=\"{charset}\"\n"
                     f"Content-Transfer-Encoding: {'quoted-printable' if cte != '7bit' else '7bit'}\n\n").encode() \
            + encode_body(html, charset, "quoted-printable" if cte != "7bit" else "7bit")
        alt_b = bnd + "_alt"
        body_core = (f"Content-Type: multipart/alternative; boundary=\"{alt_b}\"\n\n").encode() \
            + f"--{alt_b}\n".encode() + text_part + f"\n--{alt_b}\n".encode() + html_part \
            + f"\n--{alt_b}--\n".encode()
    else:
        body_core = text_part
    if attachments:
        parts = [f"This is a multi-part message in MIME format.\n\n--{bnd}\n".encode() + body_core]
        for ctype, fname, b64, cid in attachments:
            parts.append(attachment_part(bnd, ctype, fname, b64, cid))
        body = b"\n".join(parts) + f"\n--{bnd}--\n".encode()
        headers.append(f"Content-Type: multipart/mixed; boundary=\"{bnd}\"")
        head = "\n".join(headers).encode("ascii") + b"\n\n"
        return head + body
    head = "\n".join(headers).encode("ascii") + b"\n"
    return head + body_core


# ---------------------------------------------------------------------------------------------
# Maildir plumbing

def maildir_of(address):
    local, domain = address.lower().split("@", 1)
    if not local or "/" in local or "/" in domain or local.startswith("."):
        sys.exit(f"loadgen: bad address {address!r}")
    return os.path.join(ARGS.mail_root, domain, local)


def file_name(i, data):
    vsize = len(data) + data.count(b"\n")  # RFC822.SIZE: with CRLF line ends
    return f"{BASE_TIME + i * 37}.M{i:06d}P0.loadgen,S={len(data)},W={vsize}:2,", vsize


def render_range(task):
    start, end, stage = task
    out = []
    for i in range(start, end):
        data = render(i)
        name, vsize = file_name(i, data)
        path = os.path.join(stage, name)
        with open(path, "wb") as f:
            f.write(data)
        os.utime(path, (meta(i)["time"], meta(i)["time"]))
        out.append((i, name, len(data), vsize, meta(i)["kind"], meta(i)["charset"],
                    meta(i)["parent"] is not None, meta(i)["dup_of"] is not None))
    return out


def init_worker(args, mat):
    global ARGS, MAT
    ARGS, MAT = args, mat


def doveadm(*argv):
    return subprocess.run(["doveadm", "-c", ARGS.dovecot_conf, *argv], check=True,
                          capture_output=True, text=True).stdout


def main():
    global ARGS, MAT
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("addresses", nargs="+", metavar="ADDRESS")
    ap.add_argument("--count", type=int, default=10000)
    ap.add_argument("--seed", type=int, default=7)
    ap.add_argument("--quarantine-limit", type=int, default=12 * 1024 * 1024)
    ap.add_argument("--jobs", type=int, default=os.cpu_count() or 2)
    ap.add_argument("--manifest", help="write per-message sizes and kinds (JSON) here")
    ap.add_argument("--clean", action="store_true", help="delete the addresses' Maildirs and exit")
    ap.add_argument("--mail-root", default=os.environ.get("MAILSTACK_MAIL_ROOT"))
    ap.add_argument("--dovecot-conf", default=None)
    ARGS = ap.parse_args()
    if not ARGS.mail_root:
        sys.exit("loadgen: set MAILSTACK_MAIL_ROOT (eval \"$(scripts/mailstack.sh env)\") or --mail-root")
    ARGS.mail_root = os.path.abspath(ARGS.mail_root)
    if ARGS.dovecot_conf is None:
        ARGS.dovecot_conf = os.path.join(os.path.dirname(ARGS.mail_root), "dovecot", "dovecot.conf")

    if ARGS.clean:
        for a in ARGS.addresses:
            d = maildir_of(a)
            if os.path.isdir(d):
                shutil.rmtree(d)
        return

    pw = pwd.getpwnam(VMAIL_USER)
    t0 = time.monotonic()
    MAT = Material(ARGS.seed, pool_bytes=int(ARGS.quarantine_limit * 1.5) + (4 << 20))
    t_mat = time.monotonic()
    stage = os.path.join(ARGS.mail_root, f".loadgen-stage-{os.getpid()}")
    os.makedirs(stage)
    try:
        chunk = 250
        tasks = [(s, min(s + chunk, ARGS.count), stage) for s in range(0, ARGS.count, chunk)]
        rows = []
        ctx = multiprocessing.get_context("fork")
        with ctx.Pool(ARGS.jobs, initializer=init_worker, initargs=(ARGS, MAT)) as pool:
            for part in pool.imap_unordered(render_range, tasks):
                rows.extend(part)
        rows.sort()
        t_gen = time.monotonic()
        for _, name, *_ in rows:
            os.chown(os.path.join(stage, name), pw.pw_uid, pw.pw_gid)
        for a in ARGS.addresses:
            d = maildir_of(a)
            if os.path.exists(d):
                sys.exit(f"loadgen: {d} exists; use a fresh address or --clean it first")
            os.makedirs(os.path.dirname(d), exist_ok=True)
            for sub in ("", "cur", "new", "tmp"):
                os.makedirs(os.path.join(d, sub), exist_ok=True)
                os.chown(os.path.join(d, sub), pw.pw_uid, pw.pw_gid)
                os.chmod(os.path.join(d, sub), 0o700)
            cur = os.path.join(d, "cur")
            for _, name, *_ in rows:
                os.link(os.path.join(stage, name), os.path.join(cur, name))
        t_link = time.monotonic()
        statuses = {}
        for a in ARGS.addresses:
            # Dovecot's first sync of the folder (UIDs, index) happens here, not in the first client.
            statuses[a] = doveadm("mailbox", "status", "-u", a, "messages uidnext vsize", "INBOX").strip()
        t_idx = time.monotonic()
    finally:
        shutil.rmtree(stage, ignore_errors=True)

    total = sum(r[3] for r in rows)
    over = [r for r in rows if r[3] > ARGS.quarantine_limit]
    kinds = {}
    charsets = {}
    for r in rows:
        kinds[r[4]] = kinds.get(r[4], 0) + 1
        charsets[r[5]] = charsets.get(r[5], 0) + 1
    summary = {
        "count": len(rows),
        "seed": ARGS.seed,
        "addresses": ARGS.addresses,
        "bytes": total,
        "quarantine_limit": ARGS.quarantine_limit,
        "oversize_count": len(over),
        "oversize_bytes": sum(r[3] for r in over),
        "fetchable_count": len(rows) - len(over),
        "fetchable_bytes": total - sum(r[3] for r in over),
        "kinds": kinds,
        "charsets": charsets,
        "replies": sum(1 for r in rows if r[6]),
        "redeliveries": sum(1 for r in rows if r[7]),
        "size_5_50k": sum(1 for r in rows if 5_000 <= r[3] <= 50_000),
        "max_bytes": max((r[3] for r in rows), default=0),
        "seconds": {"material": round(t_mat - t0, 2), "render": round(t_gen - t_mat, 2),
                    "link": round(t_link - t_gen, 2), "index": round(t_idx - t_link, 2),
                    "total": round(t_idx - t0, 2)},
        "dovecot_status": statuses,
    }
    summary["msgs_per_s"] = round(len(rows) / max(t_idx - t0, 1e-9))
    if ARGS.manifest:
        with open(ARGS.manifest, "w") as f:
            json.dump({"summary": summary, "messages": [
                {"i": r[0], "bytes": r[2], "rfc822_size": r[3], "kind": r[4], "charset": r[5]} for r in rows]}, f)
    print(json.dumps(summary, indent=1))


if __name__ == "__main__":
    main()
