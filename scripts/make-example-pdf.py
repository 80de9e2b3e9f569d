#!/usr/bin/env python3
"""Writes examples/data/apollo13-problem.pdf: lines 400-560 of the Apollo 13 day-3 transcript
(public domain, ../shared/corpus) as a plain multi-page PDF, for the contextual-retrieval
example. Standard library only: the PDF is written by hand (Helvetica, WinAnsi text), which
is all a text-extracting reader needs.

    python3 scripts/make-example-pdf.py [CORPUS_DIR] [OUT]
"""
import sys
import textwrap
from pathlib import Path

root = Path(__file__).resolve().parent.parent
corpus = Path(sys.argv[1]) if len(sys.argv) > 1 else root.parent / "shared/corpus/apollo13"
out = Path(sys.argv[2]) if len(sys.argv) > 2 else root / "examples/data/apollo13-problem.pdf"

lines = (corpus / "transcripts/day03.txt").read_text(encoding="utf-8").splitlines()[399:560]
wrapped = ["APOLLO 13 AIR-TO-GROUND VOICE TRANSCRIPTION (excerpt, GET 055:5x)", ""]
for line in lines:
    wrapped.extend(textwrap.wrap(line, 95, subsequent_indent="    ") or [""])

LINES_PER_PAGE = 50
pages = [wrapped[i:i + LINES_PER_PAGE] for i in range(0, len(wrapped), LINES_PER_PAGE)]


def pdf_string(text):
    text = text.encode("cp1252", "replace").decode("latin-1")
    return "(" + text.replace("\\", "\\\\").replace("(", "\\(").replace(")", "\\)") + ")"


objects = []  # object bodies, numbered from 1


def add(body):
    objects.append(body)
    return len(objects)


font = add("<< /Type /Font /Subtype /Type1 /BaseFont /Helvetica /Encoding /WinAnsiEncoding >>")
pages_id = add(None)  # filled in below
page_ids = []
for page in pages:
    ops = ["BT", "/F1 9 Tf", "11 TL", "50 800 Td"]
    for text in page:
        ops.append(pdf_string(text) + " Tj T*")
    ops.append("ET")
    stream = "\n".join(ops).encode("latin-1")
    content = add(b"<< /Length %d >>\nstream\n" % len(stream) + stream + b"\nendstream")
    page_ids.append(add(
        f"<< /Type /Page /Parent {pages_id} 0 R /MediaBox [0 0 612 842] "
        f"/Resources << /Font << /F1 {font} 0 R >> >> /Contents {content} 0 R >>"))
kids = " ".join(f"{p} 0 R" for p in page_ids)
objects[pages_id - 1] = f"<< /Type /Pages /Kids [{kids}] /Count {len(page_ids)} >>"
catalog = add(f"<< /Type /Catalog /Pages {pages_id} 0 R >>")

body = bytearray(b"%PDF-1.4\n%\xe2\xe3\xcf\xd3\n")
offsets = []
for number, obj in enumerate(objects, start=1):
    offsets.append(len(body))
    data = obj if isinstance(obj, bytes) else obj.encode("latin-1")
    body += b"%d 0 obj\n" % number + data + b"\nendobj\n"
xref = len(body)
body += b"xref\n0 %d\n0000000000 65535 f \n" % (len(objects) + 1)
for offset in offsets:
    body += b"%010d 00000 n \n" % offset
body += b"trailer\n<< /Size %d /Root %d 0 R >>\nstartxref\n%d\n%%%%EOF\n" % (
    len(objects) + 1, catalog, xref)
out.parent.mkdir(parents=True, exist_ok=True)
out.write_bytes(bytes(body))
print(f"{out}: {len(pages)} pages, {len(body)} bytes")
