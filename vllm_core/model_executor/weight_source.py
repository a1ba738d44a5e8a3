"""Checkpoint tensors read lazily, so that a tensor-parallel rank reads only its slice.

The loaders yield ``(name, source)`` where ``source`` is a ``torch.Tensor`` or a
``LazyTensor``. A parallel layer's weight loader asks for the rows or columns it owns with
``read_slice(source, dim, start, size)``; a rank never materialises what it does not own when
the format allows it (safetensors: ``safe_open(...).get_slice``, memory-mapped; GGUF: rows of
unquantized tensors. Quantized GGUF tensors are dequantized whole, then sliced).
"""

from __future__ import annotations

from collections.abc import Callable

import torch


class LazyTensor:
    """A checkpoint tensor of ``shape`` read on demand by ``reader(dim, start, size)`` (``dim``
    None: the whole tensor)."""

    __slots__ = ("shape", "_reader")

    def __init__(self, shape: tuple[int, ...],
                 reader: Callable[[int | None, int, int], torch.Tensor]) -> None:
        self.shape = tuple(int(s) for s in shape)
        self._reader = reader

    def read(self, dim: int | None = None, start: int = 0, size: int = 0) -> torch.Tensor:
        return self._reader(dim, start, size)


class QuantizedLazyTensor(LazyTensor):
    """A float ``[N, K]`` checkpoint tensor that can also be read kept quantized:
    ``read_quantized(start, size)`` is the ``WNA16Weight`` (``quantization/
    quantized_weights.py``) of rows ``[start, start + size)``, scales and zero points in
    float32. Yielded by a loader only for tensors its quantization config keeps quantized
    and that a layer may take as they are (GGUF vocabulary tables,
    ``layers/quantized_vocab.py``); any other reader sees a plain ``LazyTensor``."""

    __slots__ = ("_quantized",)

    def __init__(self, shape: tuple[int, ...],
                 reader: Callable[[int | None, int, int], torch.Tensor],
                 quantized: Callable[[int, int], object]) -> None:
        super().__init__(shape, reader)
        self._quantized = quantized

    def read_quantized(self, start: int, size: int) -> object:
        return self._quantized(start, size)


WeightSource = torch.Tensor | LazyTensor


def source_shape(source: WeightSource) -> tuple[int, ...]:
    return tuple(source.shape)


def read_full(source: WeightSource) -> torch.Tensor:
    """The whole tensor."""
    return source if isinstance(source, torch.Tensor) else source.read()


def read_slice(source: WeightSource, dim: int, start: int, size: int) -> torch.Tensor:
    """``size`` entries from ``start`` along ``dim`` (0 or 1). Raises ValueError when the
    range is outside the tensor."""
    shape = source_shape(source)
    if dim >= len(shape) or start < 0 or start + size > shape[dim]:
        raise ValueError(f"slice [{start}, {start + size}) of dim {dim} is outside a tensor "
                         f"of shape {shape}")
    if isinstance(source, torch.Tensor):
        return source.narrow(dim, start, size)
    return source.read(dim, start, size)


def safetensors_lazy(handle: object, name: str) -> LazyTensor:
    """A tensor of an open ``safe_open`` handle, sliced before it is read (mmap)."""
    sl = handle.get_slice(name)

    def reader(dim: int | None, start: int, size: int) -> torch.Tensor:
        if dim is None:
            return handle.get_tensor(name)
        index = (slice(start, start + size),) if dim == 0 else (
            slice(None), slice(start, start + size))
        return sl[index]

    return LazyTensor(tuple(sl.get_shape()), reader)
