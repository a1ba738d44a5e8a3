"""Device facts the core may rely on without knowing any platform."""

from __future__ import annotations

import torch

HOST = torch.device("cpu")
"""Host memory, in torch's naming. Tensors here need no upload; comparing a device with it is
how the core tells host-resident work (e.g. a sampler running on the host) from device work,
never by a platform's device-type string."""
