"""The fast GGUF header reader gives exactly what ``gguf.GGUFReader`` gives (metadata with
arrays as lengths, tensors with the same shapes, dtypes and bytes), in a fraction of the time."""

from __future__ import annotations

import time

import numpy as np
import pytest

from vllm_core.model_executor.default_model import default_model_path
from vllm_core.model_executor.gguf_fast_reader import read_gguf


def test_matches_gguf_reader_on_the_default_model():
    from gguf import GGUFReader, GGUFValueType

    path = default_model_path()
    t0 = time.perf_counter()
    metadata, tensors = read_gguf(path)
    fast = time.perf_counter() - t0
    t0 = time.perf_counter()
    reader = GGUFReader(path)
    slow = time.perf_counter() - t0
    expected = {name: len(f.data) if f.types and f.types[0] == GGUFValueType.ARRAY
                else f.contents() for name, f in reader.fields.items()}
    assert metadata.keys() == expected.keys()
    for key, value in expected.items():
        assert metadata[key] == pytest.approx(value) if isinstance(value, float) \
            else metadata[key] == value, key
    assert [t.name for t in tensors] == [t.name for t in reader.tensors]
    for ours, theirs in zip(tensors, reader.tensors):
        assert ours.tensor_type == theirs.tensor_type
        assert ours.data.shape == theirs.data.shape and ours.data.dtype == theirs.data.dtype
        assert np.array_equal(np.asarray(ours.data), np.asarray(theirs.data)), ours.name
    assert fast * 5 < slow, (fast, slow)


def test_truncated_file_is_a_value_error(tmp_path):
    data = open(default_model_path(), "rb").read(200_000)
    bad = tmp_path / "cut.gguf"
    bad.write_bytes(data)
    with pytest.raises(ValueError):
        read_gguf(str(bad))
    (tmp_path / "magic.gguf").write_bytes(b"NOPE" + data[4:1000])
    with pytest.raises(ValueError, match="magic"):
        read_gguf(str(tmp_path / "magic.gguf"))
