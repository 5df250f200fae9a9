"""A file response that honours HTTP ``Range``, so an ``<audio>`` player can seek in a recording."""

from __future__ import annotations

import re
from collections.abc import Iterator
from typing import IO

from django.core.files import File
from django.http import FileResponse, HttpRequest, HttpResponse, StreamingHttpResponse

RANGE = re.compile(r"^bytes=(\d*)-(\d*)$")
CHUNK = 64 * 1024


def _read(file: IO[bytes], length: int) -> Iterator[bytes]:
    try:
        while length > 0:
            chunk = file.read(min(CHUNK, length))
            if not chunk:
                break
            length -= len(chunk)
            yield chunk
    finally:
        file.close()


def ranged_file_response(request: HttpRequest, file: File, content_type: str, filename: str) -> HttpResponse:
    """The whole file (200), one byte range of it (206), or 416 for a range past its end.

    Only single ranges are served; a multi-range request gets the whole file, which RFC 9110 allows.
    """
    size = file.size
    match = RANGE.match(request.headers.get("Range", "").strip())
    if match is None or not any(match.groups()):
        response: HttpResponse = FileResponse(file.open("rb"), content_type=content_type)
    else:
        first, last = match.groups()
        if first:
            start, end = int(first), min(int(last), size - 1) if last else size - 1
        else:  # "bytes=-N": the last N bytes
            start, end = max(size - int(last), 0), size - 1
        if start >= size or start > end:
            response = HttpResponse(status=416)
            response["Content-Range"] = f"bytes */{size}"
            return response
        handle = file.open("rb")
        handle.seek(start)
        response = StreamingHttpResponse(
            _read(handle, end - start + 1), status=206, content_type=content_type
        )
        response["Content-Range"] = f"bytes {start}-{end}/{size}"
        response["Content-Length"] = str(end - start + 1)
    response["Accept-Ranges"] = "bytes"
    response["Cache-Control"] = "private, max-age=0"
    response["Content-Disposition"] = f'inline; filename="{filename}"'
    return response
