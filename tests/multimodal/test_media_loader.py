"""``MediaLoader``: data: URLs, file:// inside --allowed-local-media-path only, http(s) with a
byte limit and a timeout (a local http.server), decompression bombs, bad base64; every error a
typed ``MediaError`` whose message starts with the request part."""

from __future__ import annotations

import base64
import http.server
import io
import os
import random
import socket
import threading
import time
from pathlib import Path

import pytest
from PIL import Image

from vllm_core.config import MultiModalConfig
from vllm_core.multimodal.media import (
    MediaAccessError,
    MediaDecodeError,
    MediaError,
    MediaFetchError,
    MediaLoader,
    MediaTooLargeError,
    MediaURLError,
)

WHERE = "messages[0].content[1].image_url"


def encode(image: Image.Image, fmt: str, **kw) -> bytes:
    buf = io.BytesIO()
    image.save(buf, format=fmt, **kw)
    return buf.getvalue()


def data_url(data: bytes, mime: str = "image/png") -> str:
    return f"data:{mime};base64," + base64.b64encode(data).decode()


def pattern(w: int = 32, h: int = 24) -> Image.Image:
    """A gradient, so decoded pixels can be compared."""
    return Image.frombytes("RGB", (w, h), bytes((x * 7 + y * 3 + c * 50) % 256
                                                for y in range(h) for x in range(w)
                                                for c in range(3)))


def loader(**kw) -> MediaLoader:
    return MediaLoader(MultiModalConfig(**kw))


# ---------------------------------------------------------------- data: URLs and decoding


@pytest.mark.parametrize("fmt,mime,lossless", [("PNG", "image/png", True),
                                               ("JPEG", "image/jpeg", False),
                                               ("WEBP", "image/webp", True)])
def test_data_url_decodes_to_rgb(fmt, mime, lossless):
    src = pattern()
    extra = {"lossless": True} if fmt == "WEBP" else {}
    img = loader().load_image(data_url(encode(src, fmt, **extra), mime), WHERE)
    assert img.mode == "RGB" and img.size == (32, 24)
    if lossless:
        assert img.tobytes() == src.tobytes()


def test_gif_gives_its_first_frame():
    frames = [Image.new("RGB", (8, 8), c) for c in ((255, 0, 0), (0, 0, 255))]
    buf = io.BytesIO()
    frames[0].save(buf, format="GIF", save_all=True, append_images=frames[1:], duration=10)
    img = loader().load_image(data_url(buf.getvalue(), "image/gif"), WHERE)
    assert img.mode == "RGB" and img.getpixel((3, 3)) == (255, 0, 0)


def test_rgba_and_palette_become_rgb():
    rgba = Image.new("RGBA", (4, 4), (10, 20, 30, 128))
    assert loader().load_image(data_url(encode(rgba, "PNG")), WHERE).mode == "RGB"
    pal = Image.new("P", (4, 4), 3)
    assert loader().load_image(data_url(encode(pal, "PNG")), WHERE).mode == "RGB"


@pytest.mark.parametrize("url,cls,words", [
    ("data:image/png;base64,@@@notbase64@@@", MediaURLError, "invalid base64"),
    ("data:image/png;base64,iVBORw0KGgo", MediaURLError, "invalid base64"),    # bad padding
    ("data:text/plain;base64,aGVsbG8=", MediaURLError, "image/*"),
    ("data:image/png,rawbytes", MediaURLError, "base64"),
    ("data:image/png;base64", MediaURLError, "malformed"),
    ("data:image/png;base64," + base64.b64encode(b"not an image at all").decode(),
     MediaDecodeError, "not a valid PNG"),
    ("ftp://example.com/cat.png", MediaURLError, "unsupported image URL scheme"),
    ("cat.png", MediaURLError, "unsupported image URL scheme"),
    ("", MediaURLError, "non-empty"),
])
def test_bad_urls_are_typed_errors_naming_the_part(url, cls, words):
    with pytest.raises(cls) as info:
        loader().load_image(url, WHERE)
    assert isinstance(info.value, MediaError) and isinstance(info.value, ValueError)
    assert str(info.value).startswith(WHERE + ": ")
    assert words in str(info.value)
    assert info.value.location == WHERE


def test_line_broken_base64_is_accepted():
    """MIME-style base64 (76-character lines) decodes; other junk does not."""
    png = encode(pattern(), "PNG")
    wrapped = base64.encodebytes(png).decode()
    assert "\n" in wrapped
    assert loader().load_image("data:image/png;base64," + wrapped, WHERE).size == (32, 24)
    with pytest.raises(MediaURLError, match="invalid base64"):
        loader().load_image("data:image/png;base64," + wrapped.replace("\n", "*"), WHERE)


def test_one_http_client_serves_many_images(http_url):
    mm = loader()
    for _ in range(3):
        assert mm.load_image(f"{http_url}/cat.png", WHERE).size == (16, 16)
    mm.close()
    assert mm.load_image(f"{http_url}/cat.png", WHERE).size == (16, 16)   # reopened


def test_unsupported_format_is_refused():
    bmp = encode(pattern(), "BMP")
    with pytest.raises(MediaDecodeError, match="PNG, JPEG, WebP or GIF"):
        loader().load_image(data_url(bmp, "image/bmp"), WHERE)


def test_truncated_image_is_a_decode_error():
    png = encode(pattern(64, 64), "PNG")
    with pytest.raises(MediaDecodeError):
        loader().load_image(data_url(png[: len(png) // 2]), WHERE)


def test_decompression_bomb_refused_from_the_header():
    """A 9000x9000 PNG of zeros is a few KB; it is refused before any pixel is decoded."""
    bomb = encode(Image.new("1", (9000, 9000)), "PNG")
    assert len(bomb) < 100_000
    with pytest.raises(MediaTooLargeError, match="81000000 pixels"):
        loader().load_image(data_url(bomb), WHERE)
    small = encode(pattern(40, 40), "PNG")
    with pytest.raises(MediaTooLargeError, match="--max-image-pixels"):
        loader(max_image_pixels=1000).load_image(data_url(small), WHERE)
    assert loader(max_image_pixels=1600).load_image(data_url(small), WHERE).size == (40, 40)


def test_byte_limit_on_data_urls():
    png = encode(pattern(64, 64), "PNG")
    with pytest.raises(MediaTooLargeError, match="--max-media-bytes"):
        loader(max_media_bytes=len(png) - 10).load_image(data_url(png), WHERE)
    assert loader(max_media_bytes=len(png)).load_image(data_url(png), WHERE).size == (64, 64)


# ---------------------------------------------------------------- file://


@pytest.fixture
def media_dirs(tmp_path: Path) -> tuple[Path, Path]:
    allowed, outside = tmp_path / "allowed", tmp_path / "outside"
    (allowed / "sub").mkdir(parents=True)
    outside.mkdir()
    (allowed / "sub" / "cat one.png").write_bytes(encode(pattern(), "PNG"))
    (outside / "secret.png").write_bytes(encode(pattern(8, 8), "PNG"))
    os.symlink(outside / "secret.png", allowed / "link.png")
    return allowed, outside


def test_file_urls_need_the_flag(media_dirs):
    allowed, _ = media_dirs
    with pytest.raises(MediaAccessError, match="--allowed-local-media-path"):
        loader().load_image(f"file://{allowed}/sub/cat%20one.png", WHERE)


def test_file_inside_the_allowed_dir_loads(media_dirs):
    allowed, _ = media_dirs
    mm = loader(allowed_local_media_path=str(allowed))
    assert mm.load_image(f"file://{allowed}/sub/cat%20one.png", WHERE).size == (32, 24)
    assert mm.load_image(f"file://localhost{allowed}/sub/cat%20one.png", WHERE).size == (32, 24)
    # "..", when it stays inside, is fine
    assert mm.load_image(f"file://{allowed}/sub/../sub/cat%20one.png", WHERE).size == (32, 24)


@pytest.mark.parametrize("rel", ["../outside/secret.png", "sub/../../outside/secret.png",
                                 "link.png"])
def test_escapes_from_the_allowed_dir_are_refused(media_dirs, rel):
    allowed, _ = media_dirs
    mm = loader(allowed_local_media_path=str(allowed))
    with pytest.raises(MediaAccessError, match="outside the allowed directory"):
        mm.load_image(f"file://{allowed}/{rel}", WHERE)


def test_file_url_errors(media_dirs, tmp_path):
    allowed, outside = media_dirs
    mm = loader(allowed_local_media_path=str(allowed))
    with pytest.raises(MediaAccessError, match="outside"):
        mm.load_image(f"file://{outside}/secret.png", WHERE)
    with pytest.raises(MediaAccessError, match="not an existing regular file"):
        mm.load_image(f"file://{allowed}/missing.png", WHERE)
    with pytest.raises(MediaAccessError, match="not an existing regular file"):
        mm.load_image(f"file://{allowed}/sub", WHERE)
    with pytest.raises(MediaURLError, match="host"):
        mm.load_image(f"file://otherhost{allowed}/sub/cat%20one.png", WHERE)
    (allowed / "big.png").write_bytes(encode(pattern(64, 64), "PNG"))
    small = loader(allowed_local_media_path=str(allowed), max_media_bytes=100)
    with pytest.raises(MediaTooLargeError):
        small.load_image(f"file://{allowed}/big.png", WHERE)


def test_allowed_dir_must_exist(tmp_path):
    with pytest.raises(ValueError, match="not a directory"):
        MultiModalConfig(allowed_local_media_path=str(tmp_path / "nope"))


# ---------------------------------------------------------------- http(s)

PNG = encode(pattern(16, 16), "PNG")
BIG = encode(Image.frombytes("RGB", (64, 64), random.Random(0).randbytes(64 * 64 * 3)), "PNG")


class Handler(http.server.BaseHTTPRequestHandler):
    def log_message(self, *args) -> None:
        pass

    def do_GET(self) -> None:
        if self.path == "/cat.png":
            self._send(PNG)
        elif self.path == "/big.png":
            self._send(BIG)
        elif self.path == "/big-unsized.png":      # no Content-Length: the limit bites mid-read
            self.send_response(200)
            self.send_header("Content-Type", "image/png")
            self.end_headers()
            for i in range(0, len(BIG), 1024):
                self.wfile.write(BIG[i:i + 1024])
        elif self.path == "/slow.png":
            time.sleep(3)
            self._send(PNG)
        elif self.path == "/redirect":
            self.send_response(302)
            self.send_header("Location", "/cat.png")
            self.end_headers()
        elif self.path == "/redirect-localhost":       # same server, another host name
            self.send_response(302)
            self.send_header("Location", f"http://localhost:{self.server.server_address[1]}"
                                         f"/cat.png")
            self.end_headers()
        else:
            self.send_error(404)

    def _send(self, body: bytes) -> None:
        self.send_response(200)
        self.send_header("Content-Type", "image/png")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)


class QuietServer(http.server.ThreadingHTTPServer):
    daemon_threads = True

    def handle_error(self, request, client_address) -> None:
        pass                          # the loader hangs up on purpose (limits, timeouts)


@pytest.fixture(scope="module")
def http_url():
    server = QuietServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_address[1]}"
    server.shutdown()
    server.server_close()


def test_http_fetch(http_url):
    img = loader().load_image(f"{http_url}/cat.png", WHERE)
    assert img.size == (16, 16) and img.tobytes() == pattern(16, 16).tobytes()
    assert loader().load_image(f"{http_url}/redirect", WHERE).size == (16, 16)


def test_http_byte_limit(http_url):
    assert len(BIG) > 2048
    mm = loader(max_media_bytes=2048)
    with pytest.raises(MediaTooLargeError, match=f"{len(BIG)} bytes"):     # Content-Length
        mm.load_image(f"{http_url}/big.png", WHERE)
    with pytest.raises(MediaTooLargeError, match="larger than the limit of 2048 bytes"):
        mm.load_image(f"{http_url}/big-unsized.png", WHERE)
    assert mm.load_image(f"{http_url}/cat.png", WHERE).size == (16, 16)


def test_http_timeout(http_url):
    with pytest.raises(MediaFetchError, match="timed out after 0.5 s") as info:
        loader(media_fetch_timeout_s=0.5).load_image(f"{http_url}/slow.png", WHERE)
    assert str(info.value).startswith(WHERE)


def test_http_status_error(http_url):
    with pytest.raises(MediaFetchError, match="HTTP 404"):
        loader().load_image(f"{http_url}/missing.png", WHERE)


def test_allowed_media_domains(http_url):
    only_ip = loader(allowed_media_domains=("127.0.0.1",))
    assert only_ip.load_image(f"{http_url}/cat.png", WHERE).size == (16, 16)
    assert only_ip.load_image(f"{http_url}/redirect", WHERE).size == (16, 16)
    with pytest.raises(MediaAccessError, match="host 'localhost' is not in "
                                               "--allowed-media-domains"):
        only_ip.load_image(f"{http_url}/redirect-localhost", WHERE)     # checked on redirects
    with pytest.raises(MediaAccessError, match="'127.0.0.1' is not in"):
        loader(allowed_media_domains=("example.com",)).load_image(f"{http_url}/cat.png", WHERE)


def test_unreachable_host_is_a_clear_error():
    with socket.socket() as s:             # a port nobody listens on
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    with pytest.raises(MediaFetchError, match="unreachable"):
        loader().load_image(f"http://127.0.0.1:{port}/cat.png", WHERE)
