"""Streaming uploads to disk with a byte cap.

A file arrives either as the raw request body or as the `file` field of a multipart form.
Either way it is written to a temporary file as it arrives, never held in memory, and the
request is refused with 413 as soon as it passes the cap (up front, if Content-Length
already says so). Disk writes go through a thread so the event loop keeps serving.
"""

from __future__ import annotations

import contextlib
import os
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal
from urllib.parse import parse_qsl

import anyio
from fastapi import HTTPException, Request, status
from fastapi.exceptions import RequestValidationError
from pydantic import TypeAdapter, ValidationError
from python_multipart.exceptions import MultipartParseError
from python_multipart.multipart import MultipartParser, MultipartState, parse_options_header
from starlette.requests import ClientDisconnect

from app.schemas import Name
from worker.storage import new_id

MAX_FORM_FIELD_BYTES = 64 * 1024
# What each upload is, for the advice its refusals give: (an example file name, extra advice
# when a request is not a file, extra advice when a form holds two files).
_KINDS = {
    "corpus": (
        "corpus.txt",
        ' Text for training can also come inline: POST /train with {"text": "..."}',
        " (join text files first, e.g. cat a.txt b.txt > corpus.txt)",
    ),
    "vectors": ("vectors.bin", "", ""),
    "evaluation": ("questions-words.txt", "", ""),
}
UploadKind = Literal["corpus", "vectors", "evaluation"]


def _how_to_send(kind: UploadKind) -> str:
    return (
        "send the file's bytes as the body (Content-Type: application/octet-stream or text/plain) or as "
        f"the 'file' field of a multipart form (curl -F file=@{_KINDS[kind][0]})"
    )

_WHITESPACE = re.compile(rb"\s")


@dataclass
class Upload:
    path: Path
    size: int
    filename: str | None = None
    fields: dict[str, str] = field(default_factory=dict)

    def discard(self) -> None:
        with contextlib.suppress(FileNotFoundError):
            self.path.unlink()


_NAME = TypeAdapter(Name)


def multipart_schema(name_description: str) -> dict[str, Any]:
    """The OpenAPI entry of an upload's multipart/form-data body: the field `file`, which
    must be there, and the optional label `name`, checked as `Name` is."""
    return {
        "schema": {
            "type": "object",
            "required": ["file"],
            "properties": {
                "file": {"type": "string", "format": "binary"},
                "name": {**_NAME.json_schema(), "description": name_description},
            },
        }
    }


def upload_label(query_name: str | None, upload: Upload) -> str | None:
    """The label from `?name=` or else the form's `name` field, which is held to the same rules.

    A refused form field discards the upload, which nothing else would then remove.
    """
    if query_name is not None:
        return query_name
    value = upload.fields.get("name")
    if not value:  # a form's blank input arrives as an empty field: no label
        return None
    try:
        return _NAME.validate_python(value)
    except ValidationError as exc:
        upload.discard()
        raise RequestValidationError([{**e, "loc": ("body", "name")} for e in exc.errors(include_url=False)]) from exc


def too_large(limit: int) -> HTTPException:
    return HTTPException(status.HTTP_413_CONTENT_TOO_LARGE, detail=f"request body exceeds the limit of {limit} bytes")


def _unprocessable(message: str) -> HTTPException:
    # Shaped like FastAPI's own validation errors, so every 422 parses the same way.
    return HTTPException(
        status.HTTP_422_UNPROCESSABLE_CONTENT, detail=[{"loc": ["body"], "msg": message, "type": "value_error"}]
    )


async def receive_upload(
    request: Request, tmp_dir: Path, max_bytes: int, *, kind: UploadKind, field_name: str = "file"
) -> Upload:
    declared = request.headers.get("content-length")
    if declared is not None and declared.isdigit() and int(declared) > max_bytes:
        raise too_large(max_bytes)
    path = tmp_dir / f"upload-{new_id()}.part"
    content_type = request.headers.get("content-type", "")
    mime, params = parse_options_header(content_type)
    if mime == b"application/json":
        raise HTTPException(
            status.HTTP_415_UNSUPPORTED_MEDIA_TYPE,
            detail=f"this endpoint takes a file, not JSON: {_how_to_send(kind)}.{_KINDS[kind][1]}",
        )
    try:
        if mime == b"multipart/form-data":
            boundary = params.get(b"boundary")
            if not boundary:
                raise _unprocessable("multipart body without a boundary")
            upload = await _receive_multipart(request, path, max_bytes, boundary, field_name, _KINDS[kind][2])
        else:
            upload = await _receive_raw(request, path, max_bytes)
            if mime == b"application/x-www-form-urlencoded" and _is_form_fields(path):
                raise _unprocessable(
                    f"the body is an HTML form's fields (name=value&...), not a file: {_how_to_send(kind)}."
                    f"{_KINDS[kind][1]}"
                )
    except BaseException as exc:
        with contextlib.suppress(FileNotFoundError):
            path.unlink()
        if isinstance(exc, ClientDisconnect):
            # A client that gave up mid-upload is an ordinary event, not a server error with a
            # traceback in the log; nobody is left to read the answer.
            raise HTTPException(status.HTTP_400_BAD_REQUEST, detail="the client disconnected mid-upload") from None
        raise
    return upload


def _is_form_fields(path: Path) -> bool:
    """Whether a body sent as a form is one (`requests.post(url, data={"text": ...})`), not a
    file that curl's --data-binary labels as a form by default: encoded fields hold no
    whitespace, while a corpus or a vectors file is full of it."""
    with open(path, "rb") as fh:
        head = fh.read(MAX_FORM_FIELD_BYTES + 1)
    if not head or len(head) > MAX_FORM_FIELD_BYTES or _WHITESPACE.search(head):
        return False
    try:
        return bool(parse_qsl(head.decode("ascii"), strict_parsing=True))
    except (UnicodeDecodeError, ValueError):
        return False


async def _receive_raw(request: Request, path: Path, max_bytes: int) -> Upload:
    size = 0
    with open(path, "wb") as fh:
        async for chunk in request.stream():
            size += len(chunk)
            if size > max_bytes:
                raise too_large(max_bytes)
            if chunk:
                await anyio.to_thread.run_sync(fh.write, chunk)
    return Upload(path=path, size=size)


class _PartCollector:
    """Callbacks for python-multipart that route the file field to disk and keep small fields."""

    def __init__(self, field_name: str, max_bytes: int, join_hint: str) -> None:
        self.field_name = field_name
        self.max_bytes = max_bytes
        self.join_hint = join_hint  # advice for a form that holds two files
        self.pending: list[bytes] = []  # file bytes parsed but not yet written
        self.file_size = 0
        self.filename: str | None = None
        self.fields: dict[str, str] = {}
        self.found_file = False
        self._header_field = b""
        self._header_value = b""
        self._headers: dict[bytes, bytes] = {}
        self._name: str | None = None
        self._in_file = False
        self._value = bytearray()

    def on_part_begin(self) -> None:
        self._headers, self._name, self._in_file, self._value = {}, None, False, bytearray()

    def on_header_field(self, data: bytes, start: int, end: int) -> None:
        self._header_field += data[start:end]

    def on_header_value(self, data: bytes, start: int, end: int) -> None:
        self._header_value += data[start:end]

    def on_header_end(self) -> None:
        self._headers[self._header_field.lower()] = self._header_value
        self._header_field, self._header_value = b"", b""

    def on_headers_finished(self) -> None:
        _, params = parse_options_header(self._headers.get(b"content-disposition", b""))
        name = params.get(b"name")
        self._name = name.decode("utf-8", "replace") if name is not None else None
        if self._name == self.field_name and self.found_file:
            raise _unprocessable(
                f"the form has more than one {self.field_name!r} field: send one file per request{self.join_hint}"
            )
        if self._name == self.field_name:
            self._in_file = True
            self.found_file = True
            raw = params.get(b"filename")
            self.filename = raw.decode("utf-8", "replace") if raw else None

    def on_part_data(self, data: bytes, start: int, end: int) -> None:
        if self._in_file:
            self.file_size += end - start
            if self.file_size > self.max_bytes:
                raise too_large(self.max_bytes)
            self.pending.append(data[start:end])
        else:
            self._value += data[start:end]
            if len(self._value) > MAX_FORM_FIELD_BYTES:
                raise _unprocessable(f"form field {self._name!r} is longer than {MAX_FORM_FIELD_BYTES} bytes")

    def on_part_end(self) -> None:
        if not self._in_file and self._name is not None:
            self.fields[self._name] = self._value.decode("utf-8", "replace")


async def _receive_multipart(
    request: Request, path: Path, max_bytes: int, boundary: bytes, field_name: str, join_hint: str
) -> Upload:
    parts = _PartCollector(field_name, max_bytes, join_hint)
    parser = MultipartParser(
        boundary,
        {
            "on_part_begin": parts.on_part_begin,
            "on_part_data": parts.on_part_data,
            "on_part_end": parts.on_part_end,
            "on_header_field": parts.on_header_field,
            "on_header_value": parts.on_header_value,
            "on_header_end": parts.on_header_end,
            "on_headers_finished": parts.on_headers_finished,
        },
    )
    # The whole body may carry form overhead, but not much beyond the file itself.
    body_cap = max_bytes + 1024 * 1024
    received = 0
    with open(path, "wb") as fh:
        async for chunk in request.stream():
            received += len(chunk)
            if received > body_cap:
                raise too_large(max_bytes)
            try:
                parser.write(chunk)
            except MultipartParseError as exc:
                raise _unprocessable(f"malformed multipart body: {exc}") from exc
            if parts.pending:
                data = b"".join(parts.pending)
                parts.pending.clear()
                await anyio.to_thread.run_sync(fh.write, data)
        try:
            parser.finalize()
        except MultipartParseError as exc:
            raise _unprocessable(f"malformed multipart body: {exc}") from exc
    # python-multipart accepts a body that stops before its closing boundary; what arrived of
    # the file is then an unknown part of it, not the file.
    if parser.state != MultipartState.END:
        raise _unprocessable(
            "the multipart body was cut off: it ends before its closing boundary line, "
            "so the upload is incomplete; send it again"
        )
    if not parts.found_file:
        raise _unprocessable(f"multipart body has no field named {field_name!r}")
    return Upload(path=path, size=os.path.getsize(path), filename=parts.filename, fields=parts.fields)
