"""Image loading cost of the front end: ``MediaLoader.load_image`` against a bare PIL decode of
the same bytes (the peer), per URL kind and image size, in the same run.

``MediaLoader`` adds URL parsing, base64 decoding (``data:``), the path checks (``file://``) or
the HTTP fetch from a local ``http.server`` (``http``), the byte and pixel limits and the RGB
conversion; the peer is ``Image.open(BytesIO(raw)).convert("RGB")`` on bytes already in memory.
One JSON line per (kind, format, size): median milliseconds of each and their ratio.

    python benchmarks/media_loading.py --repeats 30
"""

from __future__ import annotations

import argparse
import base64
import http.server
import io
import json
import os
import platform
import statistics
import tempfile
import threading
import time

import numpy as np
from PIL import Image

from vllm_core.config import MultiModalConfig
from vllm_core.multimodal.media import MediaLoader

SIZES = [(448, 448), (1920, 1080)]
FORMATS = {"png": ("PNG", {}), "jpeg": ("JPEG", {"quality": 90})}


def median_ms(fn, repeats: int) -> float:
    fn()                                          # warm-up
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append((time.perf_counter() - start) * 1e3)
    return statistics.median(times)


def serve(folder: str) -> tuple[http.server.ThreadingHTTPServer, str]:
    class Handler(http.server.SimpleHTTPRequestHandler):
        def __init__(self, *a, **kw):
            super().__init__(*a, directory=folder, **kw)

        def log_message(self, *args) -> None:
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    return server, f"http://127.0.0.1:{server.server_address[1]}"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--repeats", type=int, default=30)
    args = parser.parse_args()
    rng = np.random.default_rng(0)
    folder = tempfile.mkdtemp(prefix="media-bench-")
    loader = MediaLoader(MultiModalConfig(allowed_local_media_path=folder))
    server, base = serve(folder)
    load = os.getloadavg()
    try:
        for (w, h) in SIZES:
            # a smooth image with noise: realistic compressed sizes for both formats
            grad = np.linspace(0, 255, w, dtype=np.float32)[None, :, None]
            pixels = np.clip(grad + rng.normal(0, 20, (h, w, 3)), 0, 255).astype(np.uint8)
            image = Image.fromarray(pixels)
            for name, (fmt, kw) in FORMATS.items():
                buf = io.BytesIO()
                image.save(buf, format=fmt, **kw)
                raw = buf.getvalue()
                path = os.path.join(folder, f"img_{w}x{h}.{name}")
                with open(path, "wb") as f:
                    f.write(raw)
                urls = {"data": f"data:image/{name};base64," + base64.b64encode(raw).decode(),
                        "file": f"file://{path}", "http": f"{base}/{os.path.basename(path)}"}

                def peer(raw: bytes = raw) -> None:
                    Image.open(io.BytesIO(raw)).convert("RGB")

                peer_ms = median_ms(peer, args.repeats)
                for kind, url in urls.items():
                    ours = median_ms(lambda url=url: loader.load_image(url, "bench"),
                                     args.repeats)
                    print(json.dumps({
                        "bench": "media_loading", "kind": kind, "format": name,
                        "size": f"{w}x{h}", "bytes": len(raw),
                        "media_loader_ms": round(ours, 3), "pil_decode_ms": round(peer_ms, 3),
                        "ratio": round(ours / peer_ms, 3), "repeats": args.repeats,
                        "cpu": platform.processor() or platform.machine(),
                        "loadavg_1m": round(load[0], 2)}), flush=True)
    finally:
        server.shutdown()


if __name__ == "__main__":
    main()
