"""``multipart/form-data`` bodies, parsed in memory (the body is already bounded by ``CL_MAX_BODY_BYTES``).

The parser is python-multipart's streaming one, driven over the whole body at once: no temporary files, no thread
hop per part, and the counts are ours to bound, so that too many parts is a 413 like any other limit.  A part with
a ``filename`` is a file; one without is a text field (at most ``max_field_bytes`` long).
"""

from __future__ import annotations

from dataclasses import dataclass, field

from python_multipart.exceptions import FormParserError
from python_multipart.multipart import MultipartParser, MultipartState, parse_options_header

from cl_core.validation import InvalidData, shown
from service.errors import ApiError


@dataclass(frozen=True)
class FormFile:
    name: str  # the form field's name
    filename: str
    media: str  # the part's Content-Type, lower case, without parameters ("" when absent)
    data: bytes


@dataclass(frozen=True)
class Form:
    files: list[FormFile] = field(default_factory=list)
    fields: list[tuple[str, str]] = field(default_factory=list)


@dataclass
class _Part:
    headers: dict[bytes, bytes] = field(default_factory=dict)
    options: dict[bytes, bytes] = field(default_factory=dict)  # of its Content-Disposition: name, filename
    data: bytearray = field(default_factory=bytearray)


class _Collector:
    """python-multipart's callbacks, collecting parts within the limits."""

    def __init__(self, max_parts: int, max_field_bytes: int) -> None:
        self.max_parts, self.max_field_bytes = max_parts, max_field_bytes
        self.parts: list[_Part] = []
        self._name = bytearray()
        self._value = bytearray()

    @property
    def part(self) -> _Part:
        return self.parts[-1]

    def on_part_begin(self) -> None:
        if len(self.parts) >= self.max_parts:
            raise ApiError(413, f"the form has more than {self.max_parts} parts", field="files")
        self.parts.append(_Part())

    def on_header_field(self, data: bytes, start: int, end: int) -> None:
        self._name += data[start:end]

    def on_header_value(self, data: bytes, start: int, end: int) -> None:
        self._value += data[start:end]

    def on_header_end(self) -> None:
        self.part.headers[bytes(self._name).lower()] = bytes(self._value)
        self._name.clear()
        self._value.clear()

    def on_headers_finished(self) -> None:
        _, self.part.options = parse_options_header(self.part.headers.get(b"content-disposition"))
        if b"name" not in self.part.options:
            raise InvalidData("a form part has no name (Content-Disposition: form-data; name=...)", field="body")

    def on_part_data(self, data: bytes, start: int, end: int) -> None:
        part = self.part
        part.data += data[start:end]
        if b"filename" not in part.options and len(part.data) > self.max_field_bytes:
            raise InvalidData(f"a form field is longer than {self.max_field_bytes} bytes", field="body")


def parse_form(body: bytes, content_type: str, *, max_parts: int, max_field_bytes: int = 1024) -> Form:
    """Files and text fields of a multipart/form-data body, in their order; 413 for too many parts, 422 for a
    malformed body."""
    _, params = parse_options_header(content_type)
    boundary = params.get(b"boundary")
    if not boundary:
        raise InvalidData("a multipart/form-data body needs a boundary in its Content-Type", field="content-type")
    collector = _Collector(max_parts, max_field_bytes)
    callbacks = {
        name: getattr(collector, name)
        for name in (
            "on_part_begin",
            "on_header_field",
            "on_header_value",
            "on_header_end",
            "on_headers_finished",
            "on_part_data",
        )
    }
    try:
        parser = MultipartParser(boundary, callbacks)  # type: ignore[arg-type]
        parser.write(body)
        parser.finalize()
    except FormParserError as exc:
        raise InvalidData(f"the multipart body is malformed ({shown(str(exc), 120)})", field="body") from None
    if parser.state != MultipartState.END:  # finalize() does not check that the closing boundary came
        raise InvalidData("the multipart body ends before its closing boundary", field="body")
    form = Form()
    for part in collector.parts:
        options = part.options
        name = options[b"name"].decode("utf-8", "replace")
        if b"filename" in options:
            media = parse_options_header(part.headers.get(b"content-type"))[0].decode("latin-1")
            filename = options[b"filename"].decode("utf-8", "replace")
            form.files.append(FormFile(name, filename, media, bytes(part.data)))
        else:
            try:
                form.fields.append((name, part.data.decode("utf-8")))
            except UnicodeDecodeError:
                raise InvalidData(f"the form field {shown(name, 64)} is not UTF-8 text", field=name) from None
    return form
