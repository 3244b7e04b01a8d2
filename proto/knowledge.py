"""Knowledge documents uploaded through `/v1/agents/{id}/knowledge/{name}`: kept in the
JetStream object store `KNOWLEDGE_BUCKET` (stream `OBJ_<bucket>`), one object per document
named `{agent_id}/{name}`, holding the text extracted at upload (UTF-8; the original file is
not kept). The gateway writes and deletes them; the brain follows the bucket and indexes each
agent's documents for retrieval.

What the listing shows rides in the object's headers (nats object-store headers are
`name -> [values]`, as in Go's `nats.Header`), so listing reads no document's text."""

from __future__ import annotations

import re
from typing import Literal

import msgspec

KNOWLEDGE_BUCKET = "voxline_knowledge"

# Uploads the API takes (the request's Content-Type).
DocumentType = Literal["text/plain", "text/markdown", "text/html", "application/pdf"]
DOCUMENT_TYPES: tuple[str, ...] = ("text/plain", "text/markdown", "text/html", "application/pdf")
# What the stored text is, for the chunker: HTML is stored as Markdown (its headings kept),
# PDF as plain text.
TextType = Literal["text/plain", "text/markdown"]

# A document's name: letters, digits, `.`, `_`, `-`, starting with a letter or digit.
DOCUMENT_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,127}$")

# Object headers (each value a one-element list).
H_CONTENT_TYPE = "Content-Type"  # the upload's type
H_TEXT_TYPE = "Voxline-Text-Type"  # the stored text's type (TextType)
H_BYTES = "Voxline-Bytes"  # size of the upload
H_CHARACTERS = "Voxline-Characters"  # of the extracted text
H_CHUNKS = "Voxline-Chunks"  # retrieval chunks the text makes
H_UPLOADED_AT = "Voxline-Uploaded-At"  # ISO-8601 UTC


def document_object(agent_id: str, name: str) -> str:
    """The object's name in `KNOWLEDGE_BUCKET`."""
    return f"{agent_id}/{name}"


class KnowledgeDocument(msgspec.Struct, kw_only=True):
    """One uploaded document, as `GET /v1/agents/{id}/knowledge` lists it."""

    name: str
    content_type: str
    bytes: int  # the upload's size
    characters: int  # of the text extracted from it
    chunks: int  # passages retrieval chooses among
    uploaded_at: str  # ISO-8601 UTC
