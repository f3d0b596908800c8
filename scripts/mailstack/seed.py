#!/usr/bin/env python3
"""Deliver realistic sample mails into a mailstack mailbox over LMTP (Dovecot).

Usage: seed.py [--host 127.0.0.1] [--port 14024] [ADDRESS] [COUNT]

Cycles through five kinds of customer request: plain text, HTML only, plain text with a PDF and a
PNG attachment, an RFC 2047 encoded non-ASCII subject with an ISO-8859-1 body, and
multipart/alternative. Every run gets fresh Message-IDs and Dates; senders are at customer.test.
Only the Python standard library is used.
"""

import argparse
import smtplib
import struct
import sys
import time
import zlib
from email.charset import Charset
from email.header import Header, decode_header, make_header
from email.message import EmailMessage
from email.mime.application import MIMEApplication
from email.mime.image import MIMEImage
from email.mime.multipart import MIMEMultipart
from email.mime.text import MIMEText
from email.utils import formataddr, formatdate, make_msgid

CUSTOMERS = [
    ("Alice Martin", "alice.martin@customer.test"),
    ("Bob Keller", "bob.keller@customer.test"),
    ("Chloé Dubois", "chloe.dubois@customer.test"),
    ("Jürgen Weiß", "juergen.weiss@customer.test"),
    ("Dana Osei", "dana.osei@customer.test"),
]


def tiny_pdf(text: str) -> bytes:
    """A valid one-page PDF showing `text` (ASCII)."""
    text = text.replace("\\", "\\\\").replace("(", "\\(").replace(")", "\\)")
    stream = f"BT /F1 14 Tf 72 720 Td ({text}) Tj ET".encode()
    objects = [
        b"<< /Type /Catalog /Pages 2 0 R >>",
        b"<< /Type /Pages /Kids [3 0 R] /Count 1 >>",
        b"<< /Type /Page /Parent 2 0 R /MediaBox [0 0 612 792] "
        b"/Resources << /Font << /F1 5 0 R >> >> /Contents 4 0 R >>",
        b"<< /Length %d >>\nstream\n" % len(stream) + stream + b"\nendstream",
        b"<< /Type /Font /Subtype /Type1 /BaseFont /Helvetica >>",
    ]
    out = bytearray(b"%PDF-1.4\n%\xe2\xe3\xcf\xd3\n")
    offsets = []
    for i, body in enumerate(objects, start=1):
        offsets.append(len(out))
        out += b"%d 0 obj\n" % i + body + b"\nendobj\n"
    xref = len(out)
    out += b"xref\n0 %d\n0000000000 65535 f \n" % (len(objects) + 1)
    for off in offsets:
        out += b"%010d 00000 n \n" % off
    out += b"trailer\n<< /Size %d /Root 1 0 R >>\nstartxref\n%d\n%%%%EOF\n" % (len(objects) + 1, xref)
    return bytes(out)


def tiny_png(width: int = 32, height: int = 16) -> bytes:
    """A valid RGB PNG with a simple gradient (a "screenshot")."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    rows = b"".join(
        b"\x00" + b"".join(bytes((x * 8 % 256, y * 16 % 256, 160)) for x in range(width)) for y in range(height)
    )
    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(rows)) + chunk(b"IEND", b"")


def common_headers(msg, sender, to, subject, n):
    name, addr = sender
    msg["From"] = formataddr((name, addr))
    msg["To"] = to
    msg["Subject"] = subject
    msg["Date"] = formatdate(time.time() - 60 * (10 - n % 10), localtime=True)
    msg["Message-ID"] = make_msgid(idstring=f"seed{n}", domain="customer.test")
    msg["X-Mailstack-Seed"] = str(n)
    return msg


def plain_request(n, to):
    sender = CUSTOMERS[0]
    msg = EmailMessage()
    common_headers(msg, sender, to, f"Cannot log in to the customer portal (#{n})", n)
    msg.set_content(
        "Hello support team,\n\n"
        "since this morning I cannot log in to the customer portal. After entering my password\n"
        "the page reloads and shows the login form again, without an error message.\n\n"
        "Browser: Firefox 128 on Windows 11. I already cleared cookies.\n\n"
        "Could you please have a look?\n\n"
        f"Best regards,\n{sender[0]}\nOrder number: 4711-{n:04d}\n"
    )
    return msg


def html_only(n, to):
    sender = CUSTOMERS[1]
    msg = EmailMessage()
    common_headers(msg, sender, to, f"Invoice INV-2024-{n:05d} shows the wrong VAT rate", n)
    msg.set_content(
        "<!DOCTYPE html><html><head><meta charset=\"utf-8\"><style>p{font-family:Arial}</style></head>"
        "<body><p>Dear team,</p>"
        f"<p>the invoice <b>INV-2024-{n:05d}</b> we received yesterday uses <i>19&nbsp;%</i> VAT, "
        "but our contract says <i>7&nbsp;%</i>.</p>"
        "<table border=\"1\"><tr><th>Item</th><th>Amount</th></tr>"
        "<tr><td>Support plan</td><td>1,200.00 EUR</td></tr></table>"
        "<p>Please send a corrected invoice.</p>"
        f"<p>Kind regards<br>{sender[0]}<br><a href=\"https://customer.test\">Customer Ltd.</a></p>"
        "</body></html>",
        subtype="html",
    )
    return msg


def with_attachments(n, to):
    sender = CUSTOMERS[4]
    msg = MIMEMultipart("mixed")
    common_headers(msg, sender, to, f"Error report with screenshot and log (#{n})", n)
    msg.attach(
        MIMEText(
            "Hi,\n\nthe export fails with \"Error 500\" every time. I attached a screenshot and the\n"
            "export report as PDF.\n\nThanks,\nDana\n",
            "plain",
            "utf-8",
        )
    )
    pdf = MIMEApplication(tiny_pdf(f"Export report {n}: job failed with error 500"), "pdf")
    pdf.add_header("Content-Disposition", "attachment", filename=f"export-report-{n}.pdf")
    msg.attach(pdf)
    png = MIMEImage(tiny_png(), "png")
    png.add_header("Content-Disposition", "attachment", filename="screenshot.png")
    msg.attach(png)
    return msg


def latin1(n, to):
    sender = CUSTOMERS[3]
    body = (
        "Sehr geehrte Damen und Herren,\n\n"
        "leider ist die Lieferung für Bestellung Nr. 2024-%04d beschädigt angekommen.\n"
        "Die Verpackung war geöffnet, zwei Geräte funktionieren nicht.\n\n"
        "Bitte schicken Sie Ersatz oder erstatten Sie den Betrag (249,90 €).\n\n"
        "Mit freundlichen Grüßen\nJürgen Weiß\n"
    ) % n
    # 8bit ISO-8859-1, as many mail clients send it (no quoted-printable).
    latin = Charset("iso-8859-1")
    latin.body_encoding = None
    msg = MIMEText(body.replace("€", "EUR"), "plain", latin)
    name, addr = sender
    msg["From"] = formataddr((name, addr), charset="iso-8859-1")
    msg["To"] = to
    msg["Subject"] = Header(f"Beschädigte Lieferung - Bestellung Nr. 2024-{n:04d} (Größe XL)", "iso-8859-1")
    msg["Date"] = formatdate(time.time() - 60 * (10 - n % 10), localtime=True)
    msg["Message-ID"] = make_msgid(idstring=f"seed{n}", domain="customer.test")
    msg["X-Mailstack-Seed"] = str(n)
    return msg


def alternative(n, to):
    sender = CUSTOMERS[2]
    msg = EmailMessage()
    common_headers(msg, sender, to, f"Question about upgrading our plan (#{n})", n)
    text = (
        "Hello,\n\nwe would like to upgrade from the Basic to the Business plan.\n"
        "- Is the data migrated automatically?\n- Can we keep our current users?\n\n"
        "Thank you,\nChloé Dubois\n"
    )
    msg.set_content(text)
    msg.add_alternative(
        "<html><body><p>Hello,</p><p>we would like to upgrade from the <b>Basic</b> to the "
        "<b>Business</b> plan.</p><ul><li>Is the data migrated automatically?</li>"
        "<li>Can we keep our current users?</li></ul><p>Thank you,<br>Chloé Dubois</p></body></html>",
        subtype="html",
    )
    return msg


KINDS = [plain_request, html_only, with_attachments, latin1, alternative]


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--host", default="127.0.0.1")
    ap.add_argument("--port", type=int, default=14024)
    ap.add_argument("address", nargs="?", default="support@helpdesk.test")
    ap.add_argument("count", nargs="?", type=int, default=5)
    args = ap.parse_args()

    base = int(time.time() * 1000) % 1_000_000
    with smtplib.LMTP(args.host, args.port, timeout=30) as lmtp:
        for i in range(args.count):
            n = base + i
            msg = KINDS[i % len(KINDS)](n, args.address)
            sender = CUSTOMERS[[0, 1, 4, 3, 2][i % len(KINDS)]][1]
            refused = lmtp.sendmail(sender, [args.address], msg.as_bytes())
            if refused:
                print(f"refused: {refused}", file=sys.stderr)
                return 1
            subject = str(make_header(decode_header(str(msg["Subject"]))))
            print(f"delivered {msg['Message-ID']} to {args.address}: {subject}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
