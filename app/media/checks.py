"""What a file is, decided by its content, and whether WhatsApp (and we) take it.

The type comes from the file's first bytes (magic numbers, ``filetype``), never from its name or
the Content-Type its sender claims; text without magic is ``text/plain`` when it is UTF-8 with no
NUL byte. Each kind has WhatsApp's types and size limit (``KINDS``); what is none of image,
video, audio or sticker is a document (100 MB) unless it is dangerous: executables and scripts,
HTML, SVG or XML carrying script, archives posing as images (a name or claim of an image on an
archive) and polyglots (an image that is also a ZIP archive, or carries markup or PHP).

``Inspector`` reads a stream once, chunk by chunk, as it goes to storage: it decides the type from
the first ``HEAD_BYTES``, refuses the file as soon as it passes its kind's limit (413, nothing
kept), and hashes and scans it on the way.
"""
from __future__ import annotations

import hashlib
import mimetypes
import re
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field

import filetype

from app.errors import PayloadTooLarge, ValidationError

MB = 1024 * 1024
HEAD_BYTES = 8192


@dataclass(frozen=True)
class KindRule:
    mime_types: tuple[str, ...]   # empty: any type that is not refused
    max_bytes: int


#: WhatsApp's limits per kind (the sticker limit is for a static one; animated: ANIMATED_STICKER_MAX)
KINDS = {
    "image": KindRule(("image/jpeg", "image/png", "image/webp"), 5 * MB),
    "video": KindRule(("video/mp4", "video/3gpp"), 16 * MB),
    "audio": KindRule(("audio/ogg", "audio/mpeg", "audio/aac", "audio/mp4", "audio/amr"), 16 * MB),
    "document": KindRule((), 100 * MB),
    "sticker": KindRule(("image/webp",), 100 * 1024),
}
ANIMATED_STICKER_MAX = 500 * 1024
#: an image this large may be accepted for re-encoding below WhatsApp's 5 MB (``reencode``)
REENCODE_SOURCE_MAX = 25 * MB

_EXECUTABLES = {"application/x-msdownload", "application/x-executable", "application/x-elf",
                "application/x-mach-binary", "application/vnd.microsoft.portable-executable", "application/wasm",
                "application/x-shockwave-flash", "application/x-google-chrome-extension", "application/x-deb",
                "application/x-rpm", "application/vnd.ms-cab-compressed", "application/java-archive"}
_ARCHIVES = {"application/zip", "application/x-tar", "application/x-rar-compressed", "application/gzip",
             "application/x-bzip2", "application/x-7z-compressed", "application/x-xz", "application/zstd",
             "application/x-brotli", "application/x-compress", "application/x-lzip", "application/x-lz4",
             "application/x-lzop", "application/x-unix-archive", "application/epub+zip"}
_MACHO = (b"\xfe\xed\xfa\xce", b"\xfe\xed\xfa\xcf", b"\xce\xfa\xed\xfe", b"\xcf\xfa\xed\xfe", b"\xca\xfe\xba\xbe")
_SCRIPT_IN_MARKUP = re.compile(rb"<script|javascript:|<foreignobject|<iframe|<embed|<object|\son[a-z]+\s*=",
                               re.IGNORECASE)
#: markers an image must not carry anywhere (a browser or PHP would run them)
_IMAGE_MARKERS = re.compile(rb"<script|<\?php|<html|<svg|<body", re.IGNORECASE)
_TAIL_BYTES = 65_557   # a ZIP's end-of-central-directory record lies in the last 64 KiB + 22 bytes


class MediaRefused(ValidationError):
    """422: a file we do not take (``media_type_refused``)."""

    def __init__(self, message: str, **details):
        super().__init__(message, code="media_type_refused", details=details)


class MediaTooLarge(PayloadTooLarge):
    """413 while streaming: the file passed its kind's limit."""


def declared_kind(filename: str | None, claimed_type: str | None) -> str | None:
    """The kind a file's name or claimed type announces (only to catch archives posing as images)."""
    guess = claimed_type or (mimetypes.guess_type(filename or "")[0] if filename else None) or ""
    major = guess.split("/", 1)[0]
    return major if major in ("image", "video", "audio") else None


def natural_kind(mime_type: str) -> str:
    """The kind a type is sent as when nobody asks for another: image/video/audio for WhatsApp's
    types of those, else document."""
    for kind in ("image", "video", "audio"):
        if mime_type in KINDS[kind].mime_types:
            return kind
    return "document"


def sniff(head: bytes) -> str:
    """The type of a file from its first bytes; MediaRefused for what is dangerous."""
    if head[:2] == b"MZ" or head[:4] == b"\x7fELF" or head[:4] in _MACHO or head[:3] in (b"#!/", b"#! "):
        raise MediaRefused("Executable files and scripts are refused", detected="application/x-executable")
    guess = filetype.guess(head)
    mime = guess.mime if guess else None
    if mime in _EXECUTABLES:
        raise MediaRefused("Executable files are refused", detected=mime)
    if mime == "audio/ogg" and b"OpusHead" not in head[:HEAD_BYTES]:
        mime = "audio/ogg; codecs=vorbis"  # WhatsApp plays Ogg only with Opus: a document then
    if mime == "video/x-m4v":
        mime = "video/mp4"
    if mime is None:
        mime = _text_type(head)
    return mime


def _text_type(head: bytes) -> str:
    if b"\x00" in head:
        return "application/octet-stream"
    try:
        text = head.decode("utf-8")
    except UnicodeDecodeError as exc:
        if exc.start < len(head) - 4:  # not just a character cut at the end of the head
            return "application/octet-stream"
        text = head[:exc.start].decode("utf-8")
    lowered = text.lstrip("\ufeff \t\r\n").lower()
    if lowered.startswith(("<!doctype html", "<html")) or "<html" in lowered[:1024]:
        raise MediaRefused("HTML files are refused (a browser would run their scripts)", detected="text/html")
    if "<svg" in lowered[:4096]:
        return "image/svg+xml"
    if lowered.startswith("<?xml"):
        return "application/xml"
    return "text/plain"


@dataclass
class Inspected:
    """What ``Inspector`` found out about a stream."""

    mime_type: str = "application/octet-stream"
    kind: str = "document"
    size: int = 0
    sha256: str = ""
    animated: bool = False
    head: bytes = b""
    details: dict = field(default_factory=dict)


class Inspector:
    """Checks a stream while it passes (``wrap``), then as a whole (``finish``)."""

    def __init__(self, *, filename: str | None = None, claimed_type: str | None = None, kind: str | None = None,
                 reencode: bool = False, room_bytes: int | None = None):
        self.filename, self.claimed_type, self.requested_kind = filename, claimed_type, kind
        self.reencode, self.room_bytes = reencode, room_bytes
        self.found = Inspected()
        self._hash = hashlib.sha256()
        self._limit: int | None = None
        self._markers = self._markup = False
        self._tail = b""
        self._saw_zip_entry = False

    def wrap(self, chunks: Iterable[bytes]) -> Iterator[bytes]:
        """``chunks`` as they are, checked on the way (raises at the first problem)."""
        head = bytearray()
        started = False
        for chunk in chunks:
            if not chunk:
                continue
            if not started:
                head += chunk
                if len(head) < HEAD_BYTES:
                    continue
                self._decide(bytes(head))
                started = True
                chunk, head = bytes(head), bytearray()
            self._take(chunk)
            yield chunk
        if not started:
            self._decide(bytes(head))
            if head:
                self._take(bytes(head))
                yield bytes(head)

    def _decide(self, head: bytes) -> None:
        if not head:
            raise ValidationError("The file is empty", details={"file": ["The file is empty."]})
        found = self.found
        found.head = head[:HEAD_BYTES]
        found.mime_type = sniff(head)
        if found.mime_type in _ARCHIVES and declared_kind(self.filename, self.claimed_type) is not None:
            raise MediaRefused("This file is an archive posing as a media file", detected=found.mime_type,
                               declared=self.claimed_type or self.filename)
        found.kind = self._kind(found.mime_type)
        found.animated = found.mime_type == "image/webp" and _webp_animated(head)
        self._limit = self._kind_limit()
        self._markers = found.kind in ("image", "sticker")
        self._markup = found.mime_type in ("image/svg+xml", "application/xml")

    def _kind(self, mime: str) -> str:
        natural = natural_kind(mime)
        wanted = self.requested_kind
        if wanted is None or wanted == natural:
            return natural
        if wanted == "document":
            return "document"
        if wanted == "sticker" and mime == "image/webp":
            return "sticker"
        accepted = ", ".join(KINDS[wanted].mime_types)
        raise ValidationError(f"This file is {mime}, not a WhatsApp {wanted} ({accepted})", code="media_kind_mismatch",
                              details={"kind": [f"The content is {mime}; a {wanted} must be {accepted}."],
                                       "detected": mime})

    def change_kind(self, kind: str) -> None:
        """Another kind asked for once the file went through (a form field sent after the file)."""
        self.requested_kind = kind
        self.found.kind = self._kind(self.found.mime_type)
        self._limit = self._kind_limit()
        if self.found.size > self._limit:
            raise MediaTooLarge(f"A WhatsApp {kind} is at most {_human(self._limit)}",
                                details={"limit_bytes": self._limit, "kind": kind, "mime_type": self.found.mime_type})

    def _kind_limit(self) -> int:
        kind = self.found.kind
        if kind == "sticker":
            return ANIMATED_STICKER_MAX if self.found.animated else KINDS["sticker"].max_bytes
        if kind == "image" and self.reencode:
            return REENCODE_SOURCE_MAX
        return KINDS[kind].max_bytes

    def _take(self, chunk: bytes) -> None:
        found = self.found
        found.size += len(chunk)
        self._hash.update(chunk)
        assert self._limit is not None
        if found.size > self._limit:
            raise MediaTooLarge(f"A WhatsApp {found.kind} is at most {_human(self._limit)}",
                                details={"limit_bytes": self._limit, "kind": found.kind, "mime_type": found.mime_type})
        if self.room_bytes is not None and found.size > self.room_bytes:
            raise ValidationError("The organisation's media quota is full: delete media first",
                                  code="media_quota_exceeded", details={"room_bytes": self.room_bytes})
        window = self._tail[-32:] + chunk
        if self._markup:
            if _SCRIPT_IN_MARKUP.search(window):
                raise MediaRefused("SVG and XML files with scripts are refused", detected=found.mime_type)
            self._tail = window[-32:]
        if self._markers:
            if _IMAGE_MARKERS.search(window):
                raise MediaRefused("This image carries markup or script (a polyglot file)",
                                   detected=found.mime_type)
            if b"PK\x03\x04" in window:
                self._saw_zip_entry = True
            self._tail = (self._tail + chunk)[-_TAIL_BYTES:]

    def finish(self) -> Inspected:
        """The findings, once the whole stream went through ``wrap``; MediaRefused for a polyglot
        only the end reveals (an image followed by a ZIP archive)."""
        found = self.found
        if self._markers and self._saw_zip_entry and b"PK\x05\x06" in self._tail:
            raise MediaRefused("This image is also a ZIP archive (a polyglot file)", detected=found.mime_type)
        found.sha256 = self._hash.hexdigest()
        return found


def _webp_animated(head: bytes) -> bool:
    """A WebP with the animation flag of its VP8X header."""
    return head[12:16] == b"VP8X" and len(head) > 20 and bool(head[20] & 0x02)


def _human(size: int) -> str:
    return f"{size // MB} MB" if size >= MB else f"{size // 1024} KB"

