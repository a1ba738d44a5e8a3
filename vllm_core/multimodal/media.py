"""Loading the images of a request: ``data:`` URLs, ``file://`` paths and ``http(s)`` URLs.

``MediaLoader.load_image(url, location)`` returns an RGB ``PIL.Image.Image`` or raises a
``MediaError`` whose message starts with ``location`` (where in the request the URL was, e.g.
``messages[0].content[1].image_url``), so the server can answer 400 naming the part.

Contract (every limit comes from ``MultiModalConfig``):

- ``data:image/<type>;base64,<data>``: strict base64; the decoded size at most
  ``max_media_bytes``.
- ``file://`` (``file:///abs/path`` or ``file://localhost/abs/path``): only when
  ``allowed_local_media_path`` is set, and only a regular file whose real path (symlinks
  resolved, ``..`` collapsed) lies inside that directory.
- ``http://`` / ``https://``: fetched with httpx; redirects followed (http(s) only); with
  ``allowed_media_domains`` set, the URL's host and every redirect's must be in it; the
  whole download within ``media_fetch_timeout_s`` and at most ``max_media_bytes`` (a larger
  ``Content-Length`` is refused before reading); an unreachable network or host is a
  ``MediaFetchError`` saying so.
- Decoding: PNG, JPEG, WebP or GIF (the first frame) only; ``width * height`` above
  ``max_image_pixels`` is refused from the header, before any pixel is decoded
  (decompression bombs); truncated or corrupt data is a ``MediaDecodeError``.

Pillow is imported on first use; without it the error says how to install it
(``pip install 'vllm-core[vision]'``).
"""

from __future__ import annotations

import base64
import binascii
import io
import json
import os
import re
import threading
import time
from typing import TYPE_CHECKING, Any
from urllib.parse import unquote, urlsplit

from vllm_core.config import MultiModalConfig

if TYPE_CHECKING:  # pragma: no cover
    from PIL.Image import Image

IMAGE_FORMATS = ("PNG", "JPEG", "WEBP", "GIF")
_DATA_URL = re.compile(r"^data:(?P<mime>[^;,]*)(?P<params>(;[^;,]*)*),(?P<data>.*)$", re.S)
_CHUNK = 64 * 1024


class MediaError(ValueError):
    """A media input that cannot be used. ``location`` names the request part; the message
    is ``"<location>: <reason>"``."""

    def __init__(self, location: str, reason: str) -> None:
        super().__init__(f"{location}: {reason}")
        self.location = location
        self.reason = reason


class MediaURLError(MediaError):
    """Malformed URL, unsupported scheme, bad ``data:`` URL or base64."""


class MediaAccessError(MediaError):
    """A ``file://`` URL that is not allowed (no allowed directory, outside it, not a file)."""


class MediaFetchError(MediaError):
    """An ``http(s)`` download failed: unreachable, timed out, or an HTTP error status."""


class MediaTooLargeError(MediaError):
    """More bytes than ``max_media_bytes`` or more pixels than ``max_image_pixels``."""


class MediaDecodeError(MediaError):
    """Not a PNG / JPEG / WebP / GIF image, or corrupt / truncated data."""


class _HostRefused(Exception):
    """Raised by the HTTP client's request hook; becomes a ``MediaAccessError``."""

    def __init__(self, host: str) -> None:
        super().__init__(host)
        self.host = host


def _pil() -> Any:
    try:
        from PIL import Image
    except ImportError as e:  # pragma: no cover - pillow is in the test extras
        raise ImportError("image inputs need Pillow: pip install 'vllm-core[vision]'") from e
    return Image


class MediaLoader:
    """Fetch and decode images under one ``MultiModalConfig``'s limits. Thread-safe: besides
    the config it holds one ``httpx.Client`` (made on the first http(s) URL; reusing it saves
    building an SSL context and a connection per image). ``close()`` releases it."""

    def __init__(self, config: MultiModalConfig) -> None:
        self.config = config
        self._client: Any = None
        self._client_lock = threading.Lock()

    def close(self) -> None:
        with self._client_lock:
            if self._client is not None:
                self._client.close()
                self._client = None

    def _http_client(self) -> Any:
        import httpx

        with self._client_lock:
            if self._client is None:
                self._client = httpx.Client(follow_redirects=True,
                                            headers={"User-Agent": "vllm-core"},
                                            event_hooks={"request": [self._check_host]})
            return self._client

    def _check_host(self, request: Any) -> None:
        """Every request the client sends, redirects included: refuse a host outside
        ``allowed_media_domains``."""
        allowed = self.config.allowed_media_domains
        host = (request.url.host or "").lower().rstrip(".")
        if allowed is not None and host not in allowed:
            raise _HostRefused(host)

    # ------------------------------------------------------------ entry points
    def load_image(self, url: Any, location: str) -> Image:
        """The image ``url`` points to, decoded, in RGB (``MediaError`` naming ``location``)."""
        if not isinstance(url, str) or not url.strip():
            raise MediaURLError(location, "the image URL must be a non-empty string")
        url = url.strip()
        scheme = url.split(":", 1)[0].lower() if ":" in url else ""
        if scheme == "data":
            data = self._read_data_url(url, location)
        elif scheme == "file":
            data = self._read_file_url(url, location)
        elif scheme in ("http", "https"):
            data = self._fetch_http(url, location)
        else:
            raise MediaURLError(location, f"unsupported image URL scheme {scheme or url[:20]!r} "
                                          f"(use data:, http(s): or file:)")
        return self.decode_image(data, location)

    def decode_image(self, data: bytes, location: str) -> Image:
        """Decode encoded image bytes (format and pixel limits of the module docstring)."""
        Image = _pil()
        if len(data) > self.config.max_media_bytes:
            raise self._too_many_bytes(location, len(data))
        try:
            image = Image.open(io.BytesIO(data), formats=list(IMAGE_FORMATS))
        except Image.DecompressionBombError as e:
            raise MediaTooLargeError(location, f"image refused as a decompression bomb: {e}") \
                from e
        except Exception as e:  # UnidentifiedImageError, truncated header
            raise MediaDecodeError(location, "not a valid PNG, JPEG, WebP or GIF image") from e
        width, height = image.size
        if width * height > self.config.max_image_pixels:
            raise MediaTooLargeError(
                location, f"image is {width}x{height} = {width * height} pixels, more than "
                          f"the limit of {self.config.max_image_pixels} (--max-image-pixels)")
        try:
            image.seek(0)                       # GIF / animated WebP: the first frame
            image.load()
            return image.convert("RGB")
        except Exception as e:  # truncated / corrupt pixel data
            raise MediaDecodeError(location, f"could not decode the {image.format} image: "
                                             f"{e}") from e

    # ------------------------------------------------------------ sources
    def _read_data_url(self, url: str, location: str) -> bytes:
        match = _DATA_URL.match(url)
        if match is None:
            raise MediaURLError(location, "malformed data: URL (expected "
                                          "data:image/<type>;base64,<data>)")
        mime = match["mime"].strip().lower()
        params = [p.strip().lower() for p in match["params"].split(";") if p.strip()]
        if not mime.startswith("image/"):
            raise MediaURLError(location, f"data: URL media type must be image/*, got "
                                          f"{mime or 'none'!r}")
        if "base64" not in params:
            raise MediaURLError(location, "data: URL must be base64-encoded (;base64,)")
        text = match["data"]
        if len(text) // 4 * 3 > self.config.max_media_bytes + 3:
            raise self._too_many_bytes(location, len(text) // 4 * 3)
        try:
            return base64.b64decode(text, validate=True)
        except (binascii.Error, ValueError):
            pass                       # line breaks are allowed in base64: retry without them
        try:
            return base64.b64decode("".join(text.split()), validate=True)
        except (binascii.Error, ValueError) as e:
            raise MediaURLError(location, f"invalid base64 in the data: URL: {e}") from e

    def _read_file_url(self, url: str, location: str) -> bytes:
        root = self.config.allowed_local_media_path
        if root is None:
            raise MediaAccessError(location, "file:// URLs are not allowed; the server must "
                                             "be started with --allowed-local-media-path DIR")
        parts = urlsplit(url)
        if parts.netloc not in ("", "localhost"):
            raise MediaURLError(location, f"file:// URL names host {parts.netloc!r}; only "
                                          f"local paths (file:///path) are allowed")
        path = unquote(parts.path)
        if not os.path.isabs(path):
            raise MediaURLError(location, "file:// URL must hold an absolute path")
        real = os.path.realpath(path)
        root = os.path.realpath(root)
        if os.path.commonpath([real, root]) != root:
            raise MediaAccessError(location, "file:// path is outside the allowed directory "
                                             "(--allowed-local-media-path)")
        if not os.path.isfile(real):
            raise MediaAccessError(location, "file:// path is not an existing regular file")
        size = os.path.getsize(real)
        if size > self.config.max_media_bytes:
            raise self._too_many_bytes(location, size)
        with open(real, "rb") as f:
            return f.read(self.config.max_media_bytes + 1)

    def _fetch_http(self, url: str, location: str) -> bytes:
        import httpx

        limit = self.config.max_media_bytes
        timeout = self.config.media_fetch_timeout_s
        deadline = time.monotonic() + timeout
        shown = url if len(url) <= 100 else url[:97] + "..."
        try:
            with self._http_client().stream("GET", url, timeout=timeout) as resp:
                if resp.status_code != 200:
                    raise MediaFetchError(location, f"fetching {shown} returned HTTP "
                                                    f"{resp.status_code}")
                declared = resp.headers.get("content-length")
                if declared is not None and declared.isdigit() and int(declared) > limit:
                    raise self._too_many_bytes(location, int(declared))
                buf = bytearray()
                for chunk in resp.iter_bytes(_CHUNK):
                    buf += chunk
                    if len(buf) > limit:
                        raise self._too_many_bytes(location, len(buf), at_least=True)
                    if time.monotonic() > deadline:
                        raise httpx.ReadTimeout("download deadline passed")
                return bytes(buf)
        except MediaError:
            raise
        except _HostRefused as e:
            raise MediaAccessError(location, f"host {e.host!r} is not in "
                                             f"--allowed-media-domains") from e
        except httpx.TimeoutException as e:
            raise MediaFetchError(location, f"fetching {shown} timed out after {timeout:g} s "
                                            f"(--media-fetch-timeout)") from e
        except (httpx.ConnectError, httpx.NetworkError) as e:
            raise MediaFetchError(location, f"could not connect to fetch {shown}: the network "
                                            f"or host is unreachable ({e})") from e
        except httpx.HTTPError as e:
            raise MediaFetchError(location, f"fetching {shown} failed: {e}") from e

    def _too_many_bytes(self, location: str, size: int, at_least: bool = False
                        ) -> MediaTooLargeError:
        size_text = "larger" if at_least else f"{size} bytes, more"
        return MediaTooLargeError(location, f"image is {size_text} than the limit of "
                                            f"{self.config.max_media_bytes} bytes "
                                            f"(--max-media-bytes)")


# ---------------------------------------------------------------- configuration


def add_media_cli_args(group: Any) -> None:
    """The image-input flags (names of ``--limit-mm-per-prompt`` and
    ``--allowed-local-media-path`` as in ``vllm serve``)."""
    group.add_argument("--limit-mm-per-prompt", default=None,
                       help='JSON, most items per prompt of each modality, e.g. '
                            '\'{"image": 4}\' (default 999 each); more is a 400')
    group.add_argument("--allowed-local-media-path", default=None, metavar="DIR",
                       help="let requests read image files (file:// URLs) inside DIR only; "
                            "off by default (a security risk on shared hosts)")
    group.add_argument("--allowed-media-domains", nargs="+", default=None, metavar="HOST",
                       help="http(s) images only from these hosts (redirects included); "
                            "default: any host the server can reach")
    group.add_argument("--media-fetch-timeout", type=float, default=None,
                       help="seconds one http(s) image download may take (default: "
                            "VLLM_IMAGE_FETCH_TIMEOUT, else 5)")
    group.add_argument("--max-media-bytes", type=int, default=20 * 2**20,
                       help="largest encoded image accepted, in bytes (default 20 MiB)")
    group.add_argument("--max-image-pixels", type=int, default=2**25,
                       help="largest image accepted, width x height (default 2**25); "
                            "checked before decoding")


def parse_limit_per_prompt(raw: dict[str, int] | str | None) -> dict[str, int]:
    """``--limit-mm-per-prompt`` (JSON text or a dict) as a dict (ValueError naming it)."""
    if raw is None:
        return {}
    if isinstance(raw, str):
        try:
            raw = json.loads(raw)
        except json.JSONDecodeError as e:
            raise ValueError(f"limit_mm_per_prompt is not valid JSON: {e}") from e
    if not isinstance(raw, dict):
        raise ValueError(f"limit_mm_per_prompt must be a JSON object such as "
                         f'{{"image": 4}}, got {raw!r}')
    return dict(raw)


def multimodal_config_from_args(args: Any) -> MultiModalConfig:
    """The ``MultiModalConfig`` of an ``EngineArgs`` (ValueError naming the bad flag)."""
    from vllm_core import envs

    timeout = args.media_fetch_timeout
    return MultiModalConfig(
        limit_per_prompt=parse_limit_per_prompt(args.limit_mm_per_prompt),
        allowed_local_media_path=args.allowed_local_media_path,
        allowed_media_domains=(tuple(args.allowed_media_domains)
                               if args.allowed_media_domains is not None else None),
        media_fetch_timeout_s=(float(timeout) if timeout is not None
                               else envs.image_fetch_timeout_s()),
        max_media_bytes=int(args.max_media_bytes), max_image_pixels=int(args.max_image_pixels))


__all__ = ["IMAGE_FORMATS", "MediaAccessError", "MediaDecodeError", "MediaError",
           "MediaFetchError", "MediaLoader", "MediaTooLargeError", "MediaURLError",
           "add_media_cli_args", "multimodal_config_from_args",
           "parse_limit_per_prompt"]
