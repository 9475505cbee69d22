"""Image inputs: a URL, base64 or a data URI in, an RGB Pillow image out, safely, on the request's thread.

- **Sources.** `data:` URIs (base64 or percent-encoded), bare base64 (standard or URL-safe alphabet,
  whitespace allowed), and `http(s)` URLs when fetching is on. Anything else is refused by name.
- **Formats.** JPEG (the JPEG opener also reads MPO, the multi-picture JPEG cameras write), PNG, WebP, GIF
  (its first frame) and BMP. No other Pillow plugin is ever asked to open a caller's bytes (some run external programs).
- **Bombs.** The pixel count is read from the header and checked before any pixel is decoded.
- **Modes.** EXIF orientation is applied; every mode becomes RGB as transformers' processors convert it
  (transparency composited on white), except 16-bit greyscale, which Pillow's own conversion clips to
  white: it is scaled to 8 bits first.
- **URLs** (off by default: model packages run without network). http(s) only, no credentials in the URL;
  every hop's host is resolved here and refused when any of its addresses is loopback, private, link-local,
  reserved or a cloud metadata address (names listed in `fetch_allow_hosts` may be loopback or private);
  the connection goes to the address that was checked, so a DNS answer cannot change between the check
  and the connection. Redirects are followed by hand, each hop checked the same way; the body is capped in bytes
  and must be an image, a PDF (for a PDF input) or octet-stream.
- **One deadline per request** (`Fetches`): DNS, connects, redirects and bodies of all a request's URLs end by
  it. URLs are fetched concurrently, at most `FETCH_AHEAD` ahead of the input being read, so a request of many
  URLs neither waits for them one after another nor holds all their bodies at once. Name resolution runs on a
  small bounded pool and is waited for only until the deadline (`getaddrinfo` itself cannot be interrupted).

Every refusal is a `InvalidInput` naming the input (`at`): INVALID_IMAGE, IMAGE_TOO_LARGE or
IMAGE_URL_NOT_ALLOWED. Pillow and urllib3 are imported when an image is read, never at import.
"""

from __future__ import annotations

import base64
import binascii
import io
import ipaddress
import re
import socket
import time
import urllib.parse
from collections import deque
from concurrent.futures import Future, ThreadPoolExecutor
from concurrent.futures import TimeoutError as FutureTimeout
from typing import TYPE_CHECKING, Sequence

from model_handlers.errors import InvalidInput
from model_handlers.options import ImageOptions

if TYPE_CHECKING:
    from PIL import Image

# Pillow format names that may be opened: what clients send, and nothing whose plugin does more than decode.
FORMATS = ("JPEG", "PNG", "WEBP", "GIF", "BMP")
_FORMAT_NAMES = "JPEG, PNG, WebP, GIF or BMP"
_SCHEME = re.compile(r"[A-Za-z][A-Za-z0-9+.-]*:")
_WHITESPACE = re.compile(r"\s+")
_MAX_REDIRECTS = 5
_REDIRECTS = (301, 302, 303, 307, 308)
_CHUNK = 64 * 1024
# URLs of one request fetched at once; also how many fetched bodies (each at most fetch_max_bytes) wait to be read.
FETCH_AHEAD = 8
# Name resolutions in flight per model: a hung resolver holds at most these threads, later lookups time out queued.
_RESOLVERS = 8
# Addresses that answer a cloud instance's own secrets or host agent; refused even for allowed names.
# AWS/GCP/Azure/OpenStack 169.254.169.254 and AWS's DNS are link-local (refused as such); these are not.
_METADATA = {ipaddress.ip_address(a) for a in (
    "168.63.129.16",  # Azure's host agent (WireServer), a public address
    "100.100.100.200",  # Alibaba Cloud metadata
    "fd00:ec2::254",  # AWS metadata over IPv6
)}
# application/pdf: a PDF input's URL is fetched by the same machinery (model_handlers/pdf.py reads the bytes)
_CONTENT_TYPES = ("image/", "application/pdf", "application/octet-stream", "binary/octet-stream")
# EXIF orientation (tag 0x0112) -> the Pillow transposition that shows the picture upright (ImageOps.exif_transpose's
# table, applied here on one reading of the tag); 5-8 turn it a quarter, so its sides swap
_ORIENTATION = 0x0112
_UPRIGHT = {2: "FLIP_LEFT_RIGHT", 3: "ROTATE_180", 4: "FLIP_TOP_BOTTOM", 5: "TRANSPOSE", 6: "ROTATE_270",
            7: "TRANSVERSE", 8: "ROTATE_90"}
_QUARTER_TURNS = (5, 6, 7, 8)
SEND_INLINE = "send the image as base64 or a data URI (data:image/png;base64,...) instead"


def image_error(at: str, detail: str, code: str = "INVALID_IMAGE") -> InvalidInput:
    return InvalidInput(f"{at}: {detail}", code=code)


def tiles(width: int, height: int, tile: int) -> int:
    """Square tiles of `tile` pixels covering the image, a partial tile counting whole (Jina's usage rule)."""
    return -(-width // tile) * -(-height // tile)


class ImageReader:
    """Reads image inputs under the server's image options; one per model, shared by the request threads."""

    def __init__(self, options: ImageOptions):
        self._options = options
        self._allowed = frozenset(options.fetch_allow_hosts)
        self._resolvers = ThreadPoolExecutor(_RESOLVERS, thread_name_prefix="resolve") if options.fetch else None

    def fetches(self, sources: Sequence[tuple[str, str]]) -> "Fetches":
        """One request's image sources, `(source, at)` in the order they will be read, under one fetch deadline."""
        return Fetches(self, sources, time.monotonic() + self._options.fetch_timeout_s)

    def data(self, source: str, at: str, fetch_deadline: float) -> bytes:
        """The encoded bytes of `source`: decoded base64 or data URI, or fetched from its URL."""
        text = source.strip()
        if text[:5].lower() == "data:":
            return _data_uri(text, at)
        if _SCHEME.match(text):
            return self._fetch(text, at, fetch_deadline)
        return _base64(text, at)

    def size(self, data: bytes, at: str) -> tuple[int, int]:
        """(width, height) of the image in `data` as `decode` shows it (upright: a quarter-turning EXIF orientation
        swaps the sides), read from its header alone (no pixel decoded), checked as `decode` checks it."""
        image = self._open(data, at)
        try:
            try:
                turned = _orientation(image) in _QUARTER_TURNS
            except Exception:  # noqa: BLE001 - a malformed EXIF block: decode refuses the image, naming it
                turned = False
            return image.size[::-1] if turned else image.size
        finally:
            image.close()

    def decode(self, data: bytes, at: str) -> "Image.Image":
        return self.decode_reduced(data, at, None)[0]

    def decode_reduced(self, data: bytes, at: str, shortest_side: int | None) -> tuple["Image.Image", tuple[int, int]]:
        """The image in `data` as `decode` reads it, and its upright (width, height). `shortest_side`: a JPEG may be
        decoded reduced by 1/2, 1/4 or 1/8 (libjpeg's DCT scaling), its sides never below `shortest_side`, for a
        caller that resizes it to that anyway; the size returned is still the whole image's (what usage counts)."""
        from PIL import Image

        image = self._open(data, at)
        full = image.size
        try:
            if shortest_side and image.format == "JPEG":
                image.draft(None, (shortest_side, shortest_side))
            image.load()
            orientation = _orientation(image)
            if orientation in _UPRIGHT:
                image = image.transpose(Image.Transpose[_UPRIGHT[orientation]])
            return to_rgb(image), (full[::-1] if orientation in _QUARTER_TURNS else full)
        except Exception as exc:  # noqa: BLE001 - truncated or corrupt data: any decoder error is the image's fault
            raise image_error(at, f"the {image.format} image cannot be decoded ({_reason(exc)}); send the whole "
                                  "file") from None

    def _open(self, data: bytes, at: str) -> "Image.Image":
        """The image in `data`, its header read and checked (format, pixel count), no pixel decoded yet."""
        from PIL import Image, UnidentifiedImageError

        if not data:
            raise image_error(at, "the image is empty")
        try:
            image = Image.open(io.BytesIO(data), formats=FORMATS)
        except Image.DecompressionBombError:
            raise image_error(at, f"the image has more pixels than Pillow will ever open; send at most "
                                  f"{self._options.max_pixels:,} pixels", "IMAGE_TOO_LARGE") from None
        except UnidentifiedImageError:
            raise image_error(at, f"not a {_FORMAT_NAMES} image") from None
        except Exception as exc:  # noqa: BLE001 - a malformed header can make a decoder raise anything
            raise image_error(at, f"the image cannot be read ({_reason(exc)})") from None
        width, height = image.size
        if width * height > self._options.max_pixels:
            raise image_error(at, f"the image is {width}x{height} = {width * height:,} pixels, over the limit of "
                                  f"{self._options.max_pixels:,}; send a smaller image", "IMAGE_TOO_LARGE")
        if width < 1 or height < 1:
            raise image_error(at, f"the image is {width}x{height} pixels")
        return image

    # --- URLs --------------------------------------------------------------------------------------

    def _fetch(self, url: str, at: str, deadline: float) -> bytes:
        if not self._options.fetch:
            raise image_error(at, f"image URLs are not fetched by this server (it runs without network access); "
                                  f"{SEND_INLINE}", "IMAGE_URL_NOT_ALLOWED")
        current = url
        for _ in range(_MAX_REDIRECTS + 1):
            response = self._get(current, at, deadline)
            try:
                if response.status in _REDIRECTS:
                    location = response.headers.get("Location")
                    if not location:
                        raise image_error(at, f"the image URL answered HTTP {response.status} without a Location")
                    current = urllib.parse.urljoin(current, location)
                    continue
                return self._body(response, at, deadline)
            finally:
                response.release_conn()
                response.close()
        raise image_error(at, f"the image URL redirected more than {_MAX_REDIRECTS} times")

    def _get(self, url: str, at: str, deadline: float):
        """One GET to the checked address of `url`'s host, redirects not followed."""
        import urllib3

        try:
            parts = urllib.parse.urlsplit(url)
            port = parts.port
        except ValueError:
            raise image_error(at, "the image URL is not a valid URL") from None
        scheme = parts.scheme.lower()
        if scheme not in ("http", "https"):
            raise image_error(at, f"only http(s) image URLs are fetched, not {scheme}:; {SEND_INLINE}",
                              "IMAGE_URL_NOT_ALLOWED")
        host = (parts.hostname or "").rstrip(".")
        if not host:
            raise image_error(at, "the image URL has no host")
        if parts.username is not None or parts.password is not None:
            raise image_error(at, "image URLs with credentials are not fetched", "IMAGE_URL_NOT_ALLOWED")
        default_port = 443 if scheme == "https" else 80
        port = port or default_port
        path = urllib.parse.urlunsplit(("", "", parts.path or "/", parts.query, ""))
        named = f"[{host}]" if ":" in host else host
        host_header = named if port == default_port else f"{named}:{port}"
        headers = {"Host": host_header, "User-Agent": "searchbox", "Accept": "image/*, application/pdf"}
        last_error: Exception | None = None
        for address in self._addresses(host, port, at, deadline):
            left = deadline - time.monotonic()
            if left <= 0:
                break
            timeout = urllib3.Timeout(connect=left, read=left)
            if scheme == "https":
                pool = urllib3.HTTPSConnectionPool(address, port, timeout=timeout, retries=False, maxsize=1,
                                                   server_hostname=host, assert_hostname=host,
                                                   cert_reqs="CERT_REQUIRED")
            else:
                pool = urllib3.HTTPConnectionPool(address, port, timeout=timeout, retries=False, maxsize=1)
            try:
                return pool.urlopen("GET", path, headers=headers, redirect=False, retries=False,
                                    preload_content=False, assert_same_host=False)
            except urllib3.exceptions.TimeoutError:
                raise self._too_slow(at) from None
            except urllib3.exceptions.NewConnectionError as exc:
                last_error = exc  # the next address of the name may answer
            except urllib3.exceptions.HTTPError as exc:
                raise image_error(at, f"the image URL cannot be fetched ({type(exc).__name__})") from None
        if last_error is None:
            raise self._too_slow(at)
        raise image_error(at, f"the image URL's host {host} cannot be reached")

    def _addresses(self, host: str, port: int, at: str, deadline: float) -> list[str]:
        """Every address `host` resolves to, checked; refused when any of them may not be reached."""
        try:
            literal = ipaddress.ip_address(host.strip("[]"))
            found = [literal]
        except ValueError:
            lookup = self._resolvers.submit(socket.getaddrinfo, host, port, type=socket.SOCK_STREAM)
            try:
                infos = lookup.result(timeout=max(0.0, deadline - time.monotonic()))
            except FutureTimeout:
                lookup.cancel()
                raise self._too_slow(at) from None
            except (socket.gaierror, UnicodeError, OSError):
                raise image_error(at, f"the image URL's host {host} cannot be resolved") from None
            found = list(dict.fromkeys(ipaddress.ip_address(info[4][0].split("%")[0]) for info in infos))
        allowed = host.lower() in self._allowed
        for address in found:
            problem = _refusal(address, allowed)
            if problem:
                raise image_error(at, f"the image URL's host {host} is {problem} ({address}); such addresses are "
                                      f"never fetched; {SEND_INLINE}", "IMAGE_URL_NOT_ALLOWED")
        return [str(address) for address in found]

    def _body(self, response, at: str, deadline: float) -> bytes:
        if response.status != 200:
            raise image_error(at, f"the image URL answered HTTP {response.status}")
        content_type = (response.headers.get("Content-Type") or "").split(";")[0].strip().lower()
        if not content_type.startswith(_CONTENT_TYPES):
            raise image_error(at, f"the image URL answered {content_type or 'no Content-Type'}, not an image")
        cap = self._options.fetch_max_bytes
        declared = response.headers.get("Content-Length")
        if declared and declared.isdigit() and int(declared) > cap:
            raise image_error(at, f"the image at the URL has {int(declared):,} bytes, over the limit of {cap:,}",
                              "IMAGE_TOO_LARGE")
        chunks, size = [], 0
        try:
            while True:
                if time.monotonic() > deadline:
                    raise self._too_slow(at)
                # read1: one receive per call, so the deadline is checked between a trickling server's bytes
                chunk = response.read1(_CHUNK)
                if not chunk:
                    return b"".join(chunks)
                size += len(chunk)
                if size > cap:
                    raise image_error(at, f"the image at the URL has more than {cap:,} bytes, the limit",
                                      "IMAGE_TOO_LARGE")
                chunks.append(chunk)
        except InvalidInput:
            raise
        except Exception as exc:  # noqa: BLE001 - a connection dropped or timed out mid-body
            if "timed out" in str(exc).lower() or isinstance(exc, TimeoutError):
                raise self._too_slow(at) from None
            raise image_error(at, f"the image URL's answer could not be read ({type(exc).__name__})") from None

    def _too_slow(self, at: str) -> InvalidInput:
        return image_error(at, f"fetching the request's image URLs took longer than "
                               f"{self._options.fetch_timeout_s:g} s (the limit); {SEND_INLINE}")


class Fetches:
    """One request's image inputs under one deadline; its URLs fetched concurrently, a bounded window ahead.

    `sources` are `(source, at)`, `at` naming the input uniquely ("input 3", "the query"), in the order they will
    be read; the fetches of the next `FETCH_AHEAD` URLs run while the caller decodes earlier images. Waiting ends at the deadline whatever a fetch thread is stuck in. Use as a
    context manager: leaving it cancels what was not started and stops waiting for the rest.
    """

    def __init__(self, reader: ImageReader, sources: Sequence[tuple[str, str]], deadline: float):
        self._reader = reader
        self._sources = sources
        self._positions = {at: index for index, (_, at) in enumerate(sources)}
        self.deadline = deadline
        fetching = reader._options.fetch
        self._ahead = deque(i for i, (source, _) in enumerate(sources) if fetching and is_url(source))
        self._started: dict[int, Future] = {}
        self._inline: dict[int, bytes] = {}
        workers = min(FETCH_AHEAD, len(self._ahead))
        self._pool = ThreadPoolExecutor(workers, thread_name_prefix="fetch") if workers else None
        self._fill()

    def __enter__(self) -> "Fetches":
        return self

    def __exit__(self, *exc) -> None:
        self._ahead.clear()
        for future in self._started.values():
            future.cancel()
        if self._pool is not None:
            self._pool.shutdown(wait=False, cancel_futures=True)

    def inline(self, at: str) -> bytes | None:
        """The bytes of the input named `at` when it came in the body (base64, a data URI), else None (a URL): what
        can be read before anything is fetched. Kept for `data`, which hands them over without decoding them again.

        Raises:
            InvalidInput: as `data`.
        """
        index = self._positions[at]
        source = self._sources[index][0]
        if is_url(source):
            return None
        if index not in self._inline:
            self._inline[index] = self._reader.data(source, at, self.deadline)
        return self._inline[index]

    def data(self, at: str) -> bytes:
        """The encoded bytes of the input named `at`: decoded base64 or data URI, or its URL's body.

        Raises:
            InvalidInput: INVALID_IMAGE, IMAGE_TOO_LARGE or IMAGE_URL_NOT_ALLOWED, naming `at` and why.
        """
        index = self._positions[at]
        if index in self._inline:
            return self._inline.pop(index)
        source = self._sources[index][0]
        future = self._started.pop(index, None)
        if future is None:
            return self._reader.data(source, at, self.deadline)
        try:
            return future.result(timeout=max(0.0, self.deadline - time.monotonic()))
        except FutureTimeout:
            raise self._reader._too_slow(at) from None
        finally:
            self._fill()

    def _fill(self) -> None:
        while self._ahead and len(self._started) < FETCH_AHEAD:
            index = self._ahead.popleft()
            source, at = self._sources[index]
            self._started[index] = self._pool.submit(self._reader.data, source, at, self.deadline)


def is_url(source: str) -> bool:
    """Whether `source` is fetched (an http(s) or other scheme's URL), not read from the body."""
    text = source.strip()
    return bool(_SCHEME.match(text)) and text[:5].lower() != "data:"


def _refusal(address: ipaddress.IPv4Address | ipaddress.IPv6Address, allowed: bool) -> str | None:
    """Why `address` may not be fetched from (None: it may); `allowed` names may be loopback or private."""
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
        address = address.ipv4_mapped
    if address in _METADATA or address.is_link_local:
        return "a link-local or cloud metadata address"
    if address.is_multicast or address.is_unspecified or address.is_reserved:
        return "a reserved address"
    if allowed or address.is_global:
        return None
    return "a loopback or private address" if address.is_loopback or address.is_private else "not a public address"


def _data_uri(text: str, at: str) -> bytes:
    header, comma, payload = text.partition(",")
    if not comma:
        raise image_error(at, "the data URI has no `,` before its data (data:image/png;base64,...)")
    if header.lower().endswith(";base64"):
        return _base64(payload, at, "the data URI's data")
    return urllib.parse.unquote_to_bytes(payload)


def _base64(text: str, at: str, what: str = "") -> bytes:
    try:  # what clients send: one unbroken line, read without a whitespace pass over it (~1 ms a photo, on the GIL)
        return base64.b64decode(text + "=" * (-len(text) % 4), validate=True)
    except (binascii.Error, ValueError):
        pass  # whitespace, the URL-safe alphabet or not base64 at all: as before
    compact = _WHITESPACE.sub("", text)
    try:
        return base64.b64decode(compact + "=" * (-len(compact) % 4), validate=True)
    except (binascii.Error, ValueError):
        pass
    try:
        return base64.b64decode(compact.translate(str.maketrans("-_", "+/")) + "=" * (-len(compact) % 4),
                                validate=True)
    except (binascii.Error, ValueError):
        shown = text[:40] + ("..." if len(text) > 40 else "")
        what = what or f"{shown!r}"
        raise image_error(at, f"{what} is neither base64, a data URI nor an http(s) URL") from None


def _orientation(image: "Image.Image") -> int:
    """The EXIF orientation of `image` (1: stored upright), from its EXIF block or XMP packet as Pillow reads them.
    Pillow's PNG reader decodes the pixels to look for an eXIf chunk after them: `Image.getexif` reads what the header
    gave, and once the image is loaded, what followed the pixels too."""
    from PIL import Image

    return Image.Image.getexif(image).get(_ORIENTATION, 1)


def to_rgb(image: "Image.Image") -> "Image.Image":
    """RGB as transformers' `convert_to_rgb` makes it (transparency on white), 16-bit greyscale scaled, not clipped.
    The one rule of every decoded image and of ClipPixels' own conversion (model_handlers/clip_pixels.py)."""
    from PIL import Image

    if image.mode.startswith("I;16") or image.mode == "I":
        import numpy as np

        values = np.asarray(image, dtype=np.uint32 if image.mode.startswith("I;16") else np.int64)
        image = Image.fromarray((np.clip(values, 0, 65535) >> 8).astype(np.uint8))
    elif image.mode == "F":
        import numpy as np

        image = Image.fromarray(np.clip(np.asarray(image), 0, 255).astype(np.uint8))
    # an RGB PNG's tRNS colour is transparency too: transformers (5.x) composites it as it does an alpha band
    if "A" in image.getbands() or image.info.get("transparency") is not None:
        rgba = image.convert("RGBA")
        background = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        return Image.alpha_composite(background, rgba).convert("RGB")
    if image.mode == "RGB":
        return image
    return image.convert("RGB")


def _reason(exc: BaseException) -> str:
    text = str(exc).strip() or type(exc).__name__
    return text[:200]
