"""Text out of uploaded knowledge documents (voxline/agents/extract.py): each format gives
the text a caller's question should find, and a document without text is refused with a
reason a person can act on."""

from __future__ import annotations

import pytest

from tests.unit.pdf_maker import make_pdf
from voxline.agents.extract import UnreadableDocument, extract
from voxline.agents.knowledge import chunk_document

HTML = """<!doctype html><html><head><title>Clinic</title><style>p { color: red }</style>
<script>var secret = "do not say this";</script></head>
<body><nav>Home | Prices</nav><h1>Prices</h1><h2>Crowns</h2>
<p>A porcelain crown costs
   900 dollars.</p><p>Payment plans &amp; insurance are available.<br>Ask at the desk.</p>
<noscript>Enable JavaScript</noscript><ul><li>Cleaning: 120 dollars</li><li>X-ray: 40 dollars</li></ul>
</body></html>"""


def test_markdown_and_plain_text_are_kept_as_they_are() -> None:
    assert extract(b"# Hours\n\nOpen at nine.\r\n", "text/markdown") == (
        "# Hours\n\nOpen at nine.",
        "text/markdown",
    )
    assert extract("caf\xe9 au lait".encode("latin-1"), "text/plain", "ISO-8859-1") == ("café au lait", "text/plain")
    assert extract("\ufeffWith a BOM".encode(), "text/plain") == ("With a BOM", "text/plain")


def test_html_keeps_headings_and_paragraphs_and_drops_scripts_and_styles() -> None:
    text, kind = extract(HTML.encode(), "text/html")
    assert kind == "text/markdown"
    assert "secret" not in text and "color" not in text and "JavaScript" not in text
    assert text.split("\n\n") == [
        "Home | Prices",
        "# Prices",
        "## Crowns",
        "A porcelain crown costs 900 dollars.",
        "Payment plans & insurance are available.",
        "Ask at the desk.",
        "Cleaning: 120 dollars",
        "X-ray: 40 dollars",
    ]
    chunks = [c.text for c in chunk_document(text, "prices.html", kind)]
    assert "Prices > Crowns\nA porcelain crown costs 900 dollars." in chunks


def test_html_without_closing_tags_still_gives_its_text() -> None:
    text, _ = extract(b"<html><head><title>Clinic</title><body><p>Open at nine<p>Closed on Sunday", "text/html")
    assert text == "Open at nine\n\nClosed on Sunday"


def test_a_pdf_gives_the_text_of_its_pages() -> None:
    pdf = make_pdf(["Parking is free behind the building (gate code 4711)."], ["Page two: we close at noon."])
    text, kind = extract(pdf, "application/pdf")
    assert kind == "text/plain"
    assert text == "Parking is free behind the building (gate code 4711).\n\nPage two: we close at noon."


@pytest.mark.parametrize(
    ("data", "content_type", "why"),
    [
        (b"%PDF-1.4\n1 0 obj\n<< /Type /Catalog /Pages 9 0 R >>\nendobj\ntrailer\n<< >>\n", "application/pdf", "PDF"),
        (b"this is not a PDF at all", "application/pdf", "not a readable PDF"),
        (make_pdf([]), "application/pdf", "no text layer"),
        (b"\xff\xfe\xfa broken", "text/plain", "not valid utf-8 text"),
        (b"plain", "text/plain; charset=nonsense", "unknown charset"),
        (b"  \n\n ", "text/markdown", "no text"),
        (b"<html><script>only()</script></html>", "text/html", "no text"),
        (b"a\x00b", "text/plain", "NUL"),
    ],
)
def test_a_document_without_text_is_refused_saying_why(data: bytes, content_type: str, why: str) -> None:
    kind, _, charset = content_type.partition("; charset=")
    with pytest.raises(UnreadableDocument, match=why):
        extract(data, kind, charset)
