"""Content hashes of images: equal pixels (and mode and size) give equal hashes, whatever
object or file they came from. The hash keys the encoder cache and the prefix-cache blocks the
image's placeholders cover (``inputs.MultiModalFeatures.block_extra_keys``)."""

from __future__ import annotations

import hashlib
from typing import Any


def image_hash(image: Any) -> str:
    """Hex BLAKE2b-128 of a PIL image's mode, size and raw pixel bytes."""
    h = hashlib.blake2b(digest_size=16)
    h.update(f"image:{image.mode}:{image.size[0]}x{image.size[1]}:".encode())
    h.update(image.tobytes())
    return h.hexdigest()
