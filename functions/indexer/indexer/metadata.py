"""Filterable metadata of a document: its Bedrock-style sidecar and its S3 user metadata.

A document ``<key>`` may have a sidecar object ``<key>.metadata.json`` holding
``{"metadataAttributes": {...}}``, as Amazon Bedrock Knowledge Bases reads them (Bedrock user guide,
"Set up a data source for your knowledge base" / knowledge-base-ds.html: same folder, the document's
name plus ``.metadata.json``, at most 10 KB). An attribute is a plain value (string, number,
boolean, list of strings) or the typed form ``{"value": {"type": "STRING", "stringValue": ...},
"includeForEmbedding": ...}`` (Bedrock API reference, MetadataAttributeValue: types STRING, NUMBER,
BOOLEAN, STRING_LIST; strings 1-2,048 characters; a list 1-10 strings). ``includeForEmbedding`` is
accepted and ignored: here metadata is for filtering only, so a sidecar change never re-embeds.

S3 user metadata (``x-amz-meta-*``, ``Metadata`` of GetObject/HeadObject) becomes string fields.
The sidecar wins over user metadata for a name both define.

Pure functions: nothing here does I/O, and nothing raises on bad input. An attribute that cannot be
kept is dropped with a warning that names it and says why; a sidecar that is too big or malformed
contributes nothing, with a warning. The document itself is always indexed.
"""

from __future__ import annotations

import json
import math
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from email.header import decode_header
from typing import Any

SIDECAR_SUFFIX = ".metadata.json"
# Bedrock user guide, knowledge-base-ds.html, "Metadata file requirements": "The file size doesn't
# exceed the quota of 10 KB".
MAX_SIDECAR_BYTES = 10 * 1024
# Names become OpenSearch field names under ``metadata.``: letters, digits, ``_ . -``, so a name can
# neither break a field path nor a filter; 100 characters (Bedrock allows 1-200 for a key, the
# MetadataAttribute API reference; ours is stricter on purpose).
NAME = re.compile(r"[A-Za-z0-9_.-]{1,100}")
# Bedrock API reference, MetadataAttributeValue: stringValue and each stringListValue item 1-2,048
# characters; stringListValue 1-10 items. DocumentMetadata.inlineAttributes: at most 50 attributes.
MAX_STRING = 2048
MAX_LIST = 10
MAX_ATTRIBUTES = 50
# OpenSearch ``long`` range (documentation-website, _field-types/supported-field-types/numeric.md).
_LONG = 2**63

Value = str | int | float | bool | list[str]
_TYPED_FIELDS = {
    "STRING": "stringValue",
    "NUMBER": "numberValue",
    "BOOLEAN": "booleanValue",
    "STRING_LIST": "stringListValue",
}


@dataclass(frozen=True)
class Metadata:
    """Normalized attributes, and what was refused and why (logged and reported, never raised)."""

    values: dict[str, Value] = field(default_factory=dict)
    warnings: tuple[str, ...] = ()


def is_sidecar(key: str) -> bool:
    """Is ``key`` a sidecar (never indexed as a document)?"""
    return key.endswith(SIDECAR_SUFFIX) and len(key) > len(SIDECAR_SUFFIX)


def sidecar_key(key: str) -> str:
    return key + SIDECAR_SUFFIX


def document_key(sidecar: str) -> str:
    return sidecar[: -len(SIDECAR_SUFFIX)]


def _value(name: str, raw: Any) -> tuple[Value | None, str | None]:
    """A plain attribute value, normalized, or the reason it is refused."""
    if isinstance(raw, bool):
        return raw, None
    if isinstance(raw, int):
        return (raw, None) if -_LONG <= raw < _LONG else (None, f"{name}: integer out of the 64-bit range")
    if isinstance(raw, float):
        return (raw, None) if math.isfinite(raw) else (None, f"{name}: not a finite number")
    if isinstance(raw, str):
        if not 1 <= len(raw) <= MAX_STRING:
            return None, f"{name}: a string must be 1-{MAX_STRING} characters"
        return raw, None
    if isinstance(raw, list):
        if not 1 <= len(raw) <= MAX_LIST:
            return None, f"{name}: a list must hold 1-{MAX_LIST} strings"
        if not all(isinstance(v, str) and 1 <= len(v) <= MAX_STRING for v in raw):
            return None, f"{name}: a list may hold only strings of 1-{MAX_STRING} characters"
        return list(raw), None
    if isinstance(raw, dict):
        return None, f"{name}: nested objects are not supported"
    return None, f"{name}: null or unsupported value"


def _typed(name: str, raw: dict[str, Any]) -> tuple[Value | None, str | None]:
    """The typed form ``{"value": {"type": ..., "<type>Value": ...}, "includeForEmbedding": ...}``."""
    spec = raw.get("value")
    kind = spec.get("type") if isinstance(spec, dict) else None
    if not isinstance(spec, dict) or kind not in _TYPED_FIELDS:
        return None, f"{name}: typed value needs type STRING, NUMBER, BOOLEAN or STRING_LIST"
    inner = spec.get(_TYPED_FIELDS[kind])
    ok = {
        "STRING": isinstance(inner, str),
        "NUMBER": isinstance(inner, int | float) and not isinstance(inner, bool),
        "BOOLEAN": isinstance(inner, bool),
        "STRING_LIST": isinstance(inner, list),
    }[kind]
    if not ok:
        return None, f"{name}: {kind} value missing or of the wrong type in {_TYPED_FIELDS[kind]}"
    return _value(name, inner)


def normalize(attributes: Mapping[str, Any], source: str) -> Metadata:
    """Keep what can be filtered on; say why the rest was dropped."""
    values: dict[str, Value] = {}
    warnings: list[str] = []
    for name, raw in attributes.items():
        if len(values) >= MAX_ATTRIBUTES:
            warnings.append(f"{source}: more than {MAX_ATTRIBUTES} attributes; the rest are ignored")
            break
        if not isinstance(name, str) or not NAME.fullmatch(name):
            warnings.append(f"{source}: attribute name {str(name)[:120]!r} is not 1-100 of [A-Za-z0-9_.-]")
            continue
        if isinstance(raw, dict) and "value" in raw:
            value, why = _typed(name, raw)
        else:
            value, why = _value(name, raw)
        if why is not None:
            warnings.append(f"{source}: {why}")
        else:
            assert value is not None
            values[name] = value
    return Metadata(values, tuple(warnings))


def _no_constant(token: str) -> Any:
    raise ValueError(f"{token} is not JSON")


def oversized(size: int) -> Metadata:
    """A sidecar over the limit: judged by its size alone, never read."""
    return Metadata(warnings=(f"sidecar is {size} bytes, over the {MAX_SIDECAR_BYTES}-byte limit; ignored",))


def parse_sidecar(data: bytes) -> Metadata:
    """Attributes of a sidecar's bytes; too big or malformed: none, with a warning."""
    if len(data) > MAX_SIDECAR_BYTES:
        return oversized(len(data))
    try:
        doc = json.loads(data.decode("utf-8-sig"), parse_constant=_no_constant)
    except (UnicodeDecodeError, ValueError) as exc:
        return Metadata(warnings=(f"sidecar is not valid UTF-8 JSON ({type(exc).__name__}); ignored",))
    attributes = doc.get("metadataAttributes") if isinstance(doc, dict) else None
    if not isinstance(attributes, dict):
        return Metadata(warnings=('sidecar has no "metadataAttributes" object; ignored',))
    return normalize(attributes, "sidecar")


def _header_text(value: str) -> str:
    """S3 returns non-ASCII user metadata RFC 2047-encoded (S3 user guide, "Working with object
    metadata", user-defined metadata); decode it, keep anything else as is."""
    if "=?" not in value:
        return value
    try:
        return "".join(
            part.decode(enc or "utf-8", "replace") if isinstance(part, bytes) else part
            for part, enc in decode_header(value)
        )
    except (ValueError, LookupError):
        return value


def from_user_metadata(meta: Mapping[str, str] | None) -> Metadata:
    """``x-amz-meta-*`` as boto3 returns them (``Metadata``: names without the prefix), as strings."""
    return normalize({k: _header_text(str(v)) for k, v in (meta or {}).items()}, "S3 user metadata")


def merge(user: Metadata, sidecar: Metadata) -> Metadata:
    """The sidecar wins over S3 user metadata for a name both define."""
    return Metadata({**user.values, **sidecar.values}, user.warnings + sidecar.warnings)


__all__ = [
    "MAX_SIDECAR_BYTES",
    "SIDECAR_SUFFIX",
    "Metadata",
    "Value",
    "document_key",
    "from_user_metadata",
    "is_sidecar",
    "merge",
    "normalize",
    "oversized",
    "parse_sidecar",
    "sidecar_key",
]
