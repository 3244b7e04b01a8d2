"""Text out of an uploaded knowledge document, once, at upload: retrieval and the prompt only
ever see text, and one chunker (voxline/agents/knowledge.py) serves every format.

- `text/plain`, `text/markdown`: decoded (UTF-8 unless the Content-Type's charset says
  otherwise) and stored as they are; Markdown's headings then title its chunks.
- `text/html`: the standard library's `html.parser`; script, style and the like dropped,
  headings kept as `#` lines, block elements as paragraphs; stored as Markdown.
- `application/pdf`: `pypdf`, page by page, stored as plain text; an encrypted PDF or one
  without a text layer (a scan) is refused.

A document that cannot be read raises `UnreadableDocument` saying why, which the API answers
with a 422.
"""

from __future__ import annotations

import codecs
import io
import logging
import re
from html.parser import HTMLParser

from proto.knowledge import TextType

log = logging.getLogger("voxline.agents.extract")

_SPACES = re.compile(r"[ \t\r\f\v\u00a0]+")
_BLANK_LINES = re.compile(r"\n{3,}")
# Elements whose content is never text a caller should hear.
_SKIPPED = frozenset({"script", "style", "noscript", "template", "svg", "title", "iframe", "object"})
_HEADINGS = {f"h{n}": n for n in range(1, 7)}
_BLOCKS = frozenset(
    "address article aside blockquote body dd div dl dt fieldset figcaption figure footer form header hr li main "
    "nav ol p pre section table tbody td tfoot th thead tr ul br".split()
)


class UnreadableDocument(ValueError):
    """An upload whose text cannot be had; the message says why (for the 422)."""


def _decode(data: bytes, charset: str) -> str:
    encoding = charset or "utf-8"
    try:
        codecs.lookup(encoding)
    except LookupError:
        raise UnreadableDocument(f"unknown charset {encoding[:40]!r}") from None
    try:
        text = data.decode(encoding)
    except UnicodeDecodeError as exc:
        raise UnreadableDocument(f"not valid {encoding} text (byte {exc.start})") from None
    return text.removeprefix("\ufeff")


class _HtmlText(HTMLParser):
    """Collects an HTML page's readable text as Markdown-ish paragraphs."""

    def __init__(self) -> None:
        super().__init__(convert_charrefs=True)
        self.blocks: list[str] = []
        self._line: list[str] = []
        self._skipping: list[str] = []  # open skipped elements (nested <svg> in <svg>, ...)
        self._heading = 0

    def _flush(self) -> None:
        text = _SPACES.sub(" ", " ".join(self._line)).strip()
        self._line = []
        if text:
            self.blocks.append(f"{'#' * self._heading} {text}" if self._heading else text)

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        if tag in _SKIPPED:
            self._skipping.append(tag)
        elif not self._skipping and (tag in _BLOCKS or tag in _HEADINGS):
            self._flush()
            self._heading = _HEADINGS.get(tag, 0)

    def handle_startendtag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        if not self._skipping and tag in _BLOCKS:
            self._flush()

    def handle_endtag(self, tag: str) -> None:
        if self._skipping:
            if tag == self._skipping[-1]:
                self._skipping.pop()
            return
        if tag in _BLOCKS or tag in _HEADINGS:
            self._flush()
            self._heading = 0

    def handle_data(self, data: str) -> None:
        if not self._skipping:
            self._line.append(data.replace("\n", " "))

    def text(self) -> str:
        self._flush()
        return "\n\n".join(self.blocks)


def html_text(html: str) -> str:
    parser = _HtmlText()
    try:
        parser.feed(html)
        parser.close()
    except Exception as exc:  # html.parser is lenient; anything it still trips on is the document's fault
        raise UnreadableDocument(f"the HTML cannot be parsed: {type(exc).__name__}") from None
    return parser.text()


def pdf_text(data: bytes) -> str:
    from pypdf import PdfReader
    from pypdf.errors import PyPdfError

    try:
        reader = PdfReader(io.BytesIO(data))
        if reader.is_encrypted and not reader.decrypt(""):
            raise UnreadableDocument("the PDF is encrypted (upload it without a password)")
        pages = [(page.extract_text() or "").strip() for page in reader.pages]
    except UnreadableDocument:
        raise
    except (PyPdfError, ValueError, KeyError, TypeError, AttributeError, IndexError, RecursionError) as exc:
        log.info("unreadable PDF: %s: %s", type(exc).__name__, exc)
        raise UnreadableDocument(f"not a readable PDF ({type(exc).__name__}: {str(exc)[:200]})") from None
    except Exception as exc:  # pypdf raises odd things on hostile files; still the file's fault
        log.warning("unreadable PDF: %s: %s", type(exc).__name__, exc)
        raise UnreadableDocument(f"not a readable PDF ({type(exc).__name__})") from None
    text = "\n\n".join(p for p in pages if p)
    if not text:
        raise UnreadableDocument("the PDF has no text layer (a scanned PDF needs OCR first)")
    return text


def extract(data: bytes, content_type: str, charset: str = "") -> tuple[str, TextType]:
    """The document's text and what kind of text it is; UnreadableDocument if it has none."""
    if content_type == "application/pdf":
        text, kind = pdf_text(data), "text/plain"
    elif content_type == "text/html":
        text, kind = html_text(_decode(data, charset)), "text/markdown"
    elif content_type in ("text/plain", "text/markdown"):
        text, kind = _decode(data, charset), content_type
    else:
        raise UnreadableDocument(f"cannot read {content_type[:80]!r}")
    if "\x00" in text:
        raise UnreadableDocument("the text holds NUL characters (a binary file sent as text?)")
    text = _BLANK_LINES.sub("\n\n", text.replace("\r\n", "\n")).strip()
    if not text:
        raise UnreadableDocument("the document holds no text")
    return text, kind  # type: ignore[return-value]  # one of the two literals, by the branches above
