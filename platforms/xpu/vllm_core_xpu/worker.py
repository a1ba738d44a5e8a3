"""``XpuWorker``: the core TorchWorker on ``xpu:<local_rank>``, with fused layer kernels chosen
by capability: IPEX's (``vllm_core_cpu.ipex.IpexLayerOps``; IPEX dispatches on the device)
when an XPU build of IPEX imports, else the portable Triton kernels (``TritonLayerOps``) when
they import, else the core's torch ops."""

from __future__ import annotations

from typing import Any

import torch

from vllm_core.worker.torch_worker import TorchWorker
from vllm_core_xpu.platform import ipex_xpu_status, triton_kernels_available


def choose_layer_ops() -> Any | None:
    if ipex_xpu_status()[0]:
        from vllm_core_cpu.ipex import IpexLayerOps

        return IpexLayerOps()
    if triton_kernels_available():
        from vllm_core_triton.ops import TritonLayerOps

        return TritonLayerOps()
    return None


class XpuWorker(TorchWorker):
    def make_device(self) -> torch.device:
        return torch.device("xpu", self.local_rank)

    def layer_ops(self) -> Any | None:
        return choose_layer_ops()
