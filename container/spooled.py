"""Reading a request body: whole into memory, or (bodies larger than a worker should hold: asynchronous inference's
JSON Lines, up to 1 GB) spooled to disk.

SageMaker asynchronous inference hands the container the whole S3 object as one request (up to 1 GB, up to an hour).
Read into memory, decoded and answered whole, such a body costs the worker several times its size. Instead, with
`SEARCHBOX_ASYNC`: the body is copied to a temporary file as it arrives, read back a slice of lines at a time (each
slice decoded, run and rendered on its own), and the answer is written to a second temporary file that is streamed
out. The worker then holds one slice, never the body or the answer.

Every line is decoded and checked before the model runs any of them: a bad line 90,000 answers its 400 at once
instead of after an hour of work nobody will receive. Both files are unlinked from the start (`TemporaryFile`), so
they vanish with the request, whatever ends it.
"""

from __future__ import annotations

import tempfile
from typing import IO, Iterator

from gunicorn.http.errors import ParseException

from container.errors import BadRequest, payload_too_large

# Read and written in pieces of this size.
_BLOCK = 1024 * 1024
# A slice: at most this many lines, or this many bytes (a line longer than that is a slice of its own). Large enough
# that the batcher fills its forward passes, small enough that the worker's memory stays flat.
SLICE_LINES = 1024
SLICE_BYTES = 8 * 1024 * 1024


def refuse_declared(content_length: int | None, limit: int) -> None:
    """413 before a byte is read when Content-Length already says the body is over `limit` (a chunked body is
    counted as it is read)."""
    if content_length is not None and content_length > limit:
        raise payload_too_large(limit)


def read_body(stream: IO[bytes], limit: int) -> bytes:
    """The whole body, however it is framed; over `limit` it is a 413 and nothing is computed.

    Read from the WSGI stream itself: werkzeug's limited stream cuts a chunked body at the limit
    without a word, which answered the first rows of a 7 MiB CSV with 200 and dropped the rest.

    Raises:
        PayloadTooLarge: the body is longer than `limit`.
        BadRequest: the body's framing is malformed (chunk sizes, terminators).
    """
    body = _read(stream, limit + 1)
    if len(body) > limit:
        raise payload_too_large(limit)
    return body


def spool(stream: IO[bytes], limit: int) -> IO[bytes]:
    """The request body copied to an unlinked temporary file, read back from its start.

    Raises:
        PayloadTooLarge: the body is longer than `limit` (however it is framed: the copy counts what arrives).
        BadRequest: the body's framing is malformed.
    """
    spooled = tempfile.TemporaryFile(prefix="searchbox-body-")
    size = 0
    try:
        while True:
            block = _read(stream, _BLOCK)
            if not block:
                break
            size += len(block)
            if size > limit:
                raise payload_too_large(limit)
            spooled.write(block)
    except BaseException:
        spooled.close()
        raise
    spooled.seek(0)
    return spooled


def _read(stream: IO[bytes], size: int) -> bytes:
    try:
        return stream.read(size)
    except (ParseException, ValueError) as exc:
        raise BadRequest(f"the body's framing is malformed ({type(exc).__name__}); send Content-Length or valid "
                         "chunked encoding", code="MALFORMED_BODY") from None


def slices(body: IO[bytes]) -> Iterator[tuple[int, bytes]]:
    """The body's lines in slices: (number of the slice's first line, counting from 1, its bytes)."""
    body.seek(0)
    first, lines, size, parts = 1, 0, 0, []
    for line in body:
        parts.append(line)
        lines += 1
        size += len(line)
        if lines >= SLICE_LINES or size >= SLICE_BYTES:
            yield first, b"".join(parts)
            first, lines, size, parts = first + lines, 0, 0, []
    if parts:
        yield first, b"".join(parts)


def stream_file(answer: IO[bytes]) -> Iterator[bytes]:
    """The answer file from its start, in blocks; closed (and so removed) once sent or abandoned."""
    try:
        answer.seek(0)
        while block := answer.read(_BLOCK):
            yield block
    finally:
        answer.close()
