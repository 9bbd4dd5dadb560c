"""A multipart/form-data body read as a stream: the form fields around one file, and the file as
chunks straight from the socket (werkzeug's sans-IO decoder), so an upload goes to storage as it
arrives: never held in memory, never spooled to a temporary file first, and refused as soon as it
is too large. Fields sent before the file are known before its first chunk."""
from __future__ import annotations

from collections.abc import Iterator
from typing import BinaryIO

from werkzeug.sansio.multipart import Data, Epilogue, Field, File, MultipartDecoder, NeedData

from app.errors import ValidationError

READ_BYTES = 256 * 1024
FIELD_MAX_BYTES = 4096


class StreamedForm:
    """``fields`` (text values) and the file part named ``file_field``: ``filename``,
    ``content_type`` and ``chunks()``; ``finish()`` reads what follows the file."""

    def __init__(self, stream: BinaryIO, boundary: str, file_field: str = "file"):
        self.stream, self.file_field = stream, file_field
        self.decoder = MultipartDecoder(boundary.encode("latin-1"))
        self.events = self._events()
        self.fields: dict[str, str] = {}
        self.filename: str | None = None
        self.content_type: str | None = None
        self._read_fields(until_file=True)
        if self.filename is None:
            raise ValidationError(details={file_field: ["Missing data for required field."]})

    def _events(self) -> Iterator:
        while True:
            try:
                event = self.decoder.next_event()
            except ValueError as exc:
                raise ValidationError(f"The multipart body is malformed: {exc}", code="invalid_multipart") from None
            if isinstance(event, NeedData):
                chunk = self.stream.read(READ_BYTES)
                self.decoder.receive_data(chunk or None)  # None: the body ended (early: the decoder raises)
                continue
            yield event
            if isinstance(event, Epilogue):
                return

    def _read_fields(self, *, until_file: bool) -> None:
        name: str | None = None
        value = bytearray()
        for event in self.events:
            if isinstance(event, Field):
                name, value = event.name, bytearray()
            elif isinstance(event, File):
                if event.name != self.file_field or self.filename is not None:
                    raise ValidationError(details={event.name: ["Send one file, in the `file` field."]})
                self.filename = event.filename or ""
                self.content_type = event.headers.get("Content-Type")
                if until_file:
                    return
            elif isinstance(event, Data) and name is not None:
                value += event.data
                if len(value) > FIELD_MAX_BYTES:
                    raise ValidationError(details={name: [f"At most {FIELD_MAX_BYTES} bytes."]})
                if not event.more_data:
                    self.fields[name] = value.decode("utf-8", "replace")
                    name = None
            elif isinstance(event, Epilogue):
                return

    def chunks(self) -> Iterator[bytes]:
        """The file's bytes as they arrive."""
        for event in self.events:
            if isinstance(event, Data):
                if event.data:
                    yield bytes(event.data)
                if not event.more_data:
                    return
            else:
                raise ValidationError("The multipart body is malformed", code="invalid_multipart")

    def finish(self) -> dict[str, str]:
        """Read the rest of the body (fields after the file); every field."""
        self._read_fields(until_file=False)
        return self.fields
