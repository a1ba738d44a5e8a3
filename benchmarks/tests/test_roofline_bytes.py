"""The GPU roofline counts what a quantized model or an fp8 cache really reads per step."""

import pytest
from roofline import LLAMA_3_1_8B, Ceilings, ModelShape, roofline
from throughput_gpu import stored_bytes


def test_quantized_weights_and_fp8_cache_shrink_the_decode_bytes():
    shape = ModelShape.from_hf_config(LLAMA_3_1_8B)
    ceil = Ceilings(4.0e12, 8.0e14, "test")
    run = dict(requests=1, prompt_len=128, output_len=512, max_num_seqs=256)
    bf16 = roofline(shape, ceil, **run)
    # the engine's bf16 weights (embedding table included) give the shape's bytes back
    same = stored_bytes(shape, shape.total_params * 2 / 2**30, "auto")
    assert same["weight_bytes"] == pytest.approx(shape.linear_params * 2)
    assert roofline(shape, ceil, **run, **same)["roofline_decode_s"] == pytest.approx(
        bf16["roofline_decode_s"])
    # 4-bit layers: about a third of the bytes, so about 3x the batch-1 decode roofline
    w4 = roofline(shape, ceil, **run, **stored_bytes(shape, 5.48, "auto"))
    assert 2.8 < w4["roofline_decode_tok_s"] / bf16["roofline_decode_tok_s"] < 3.3
    # an fp8 cache halves the KV bytes per token
    fp8 = stored_bytes(shape, 15.02, "fp8")
    assert fp8["kv_bytes_per_token"] * 2 == shape.kv_bytes_per_token
