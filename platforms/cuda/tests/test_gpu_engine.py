"""The whole engine on an NVIDIA GPU: parity with HF transformers, CUDA graphs, chunked
prefill, prefix caching, sampling on the GPU, memory sizing and backend selection.

Marked ``gpu``: ``nox -s tests-cuda`` runs them on a CUDA machine and reports them as NOT RUN
elsewhere; run directly they are skipped with the reason when torch sees no CUDA device.
"""

from __future__ import annotations

import gc

import pytest
import torch
from gpu_models import CASES, GPU_ONLY, hf_greedy, random_prompts, save_case

pytestmark = GPU_ONLY

MAX_TOKENS = 16
LENGTHS = [5, 17, 33, 64, 9, 120, 3]


def make_llm(folder: str, **kwargs):
    from vllm_core import LLM

    args = dict(dtype="float32", max_model_len=256, num_gpu_blocks_override=512,
                max_num_seqs=32, seed=0)
    args.update(kwargs)
    return LLM(folder, **args)


def generate(llm, prompts: list[list[int]], **params) -> list[list[int]]:
    from vllm_core import SamplingParams

    sp = SamplingParams(temperature=0.0, max_tokens=MAX_TOKENS, ignore_eos=True, **params)
    outs = llm.generate([{"prompt_token_ids": p} for p in prompts], sp, use_tqdm=False)
    return [list(o.outputs[0].token_ids) for o in outs]


def runner_of(llm):
    return llm.llm_engine.executor.worker.runner


def free(llm) -> None:
    llm.llm_engine.shutdown()
    del llm
    gc.collect()
    torch.cuda.empty_cache()


@pytest.fixture(scope="module")
def models(tmp_path_factory):
    root = str(tmp_path_factory.mktemp("gpu_models"))
    return {name: save_case(name, root) for name in CASES}


def assert_parity(ours: list[int], ref: list[int], ref_tops: list[list[int]]) -> None:
    """Identical greedy tokens, or at the first divergence our token is in HF's top-5 there
    (numerics may flip near-ties); nothing after a divergence is compared."""
    for i, (a, b) in enumerate(zip(ours, ref, strict=True)):
        if a != b:
            assert a in ref_tops[i], f"token {i}: ours {a} not in HF top-5 {ref_tops[i]}"
            return


@pytest.mark.parametrize("name", sorted(CASES))
def test_greedy_parity_with_hf(models, name):
    folder, hf = models[name]
    # The reference runs on the CPU in float32 with HF's eager attention: transformers 5.17's
    # GPU SDPA path windowed the mistral case differently from its own eager path and from
    # transformers 5.23 (which both agree with us).
    hf.set_attn_implementation("eager")
    prompts = random_prompts(LENGTHS, hf.config.vocab_size, seed=1)
    llm = make_llm(folder)
    try:
        assert runner_of(llm).attn_backend.name == "triton"
        ours = generate(llm, prompts)
        assert runner_of(llm).num_graph_steps > 0, "decode steps did not use CUDA graphs"
    finally:
        free(llm)
    exact = 0
    for prompt, got in zip(prompts, ours):
        ref, tops = hf_greedy(hf, prompt, MAX_TOKENS)
        assert_parity(got, ref, tops)
        exact += got == ref
    assert exact >= len(prompts) - 1, f"only {exact}/{len(prompts)} sequences identical"


def test_bf16_parity_within_top_k(models):
    folder, hf = models["llama"]
    hf16 = hf.to("cuda", dtype=torch.bfloat16)
    prompts = random_prompts([12, 40, 7], hf.config.vocab_size, seed=2)
    llm = make_llm(folder, dtype="bfloat16")
    try:
        ours = generate(llm, prompts)
    finally:
        free(llm)
    for prompt, got in zip(prompts, ours):
        ref, tops = hf_greedy(hf16, prompt, MAX_TOKENS)
        assert_parity(got, ref, tops)
    hf.to("cpu", dtype=torch.float32)


@pytest.fixture(scope="module")
def llama_baseline(models):
    folder, hf = models["llama"]
    prompts = random_prompts(LENGTHS + [80, 2, 45], hf.config.vocab_size, seed=3)
    llm = make_llm(folder, enforce_eager=True)
    try:
        tokens = generate(llm, prompts)
        assert runner_of(llm).num_graph_steps == 0 and runner_of(llm).graphs is None
    finally:
        free(llm)
    return folder, prompts, tokens


def test_cuda_graphs_equivalent(llama_baseline):
    folder, prompts, expected = llama_baseline
    llm = make_llm(folder)
    try:
        runner = runner_of(llm)
        assert runner.graphs is not None and runner.graphs.capture_seconds > 0
        assert generate(llm, prompts) == expected
        # batch sizes that pad (3 -> 4, 5 -> 8) and a single request
        assert generate(llm, prompts[:3]) == expected[:3]
        assert generate(llm, prompts[:5]) == expected[:5]
        assert generate(llm, prompts[4:5]) == expected[4:5]
        assert runner.num_graph_steps > 0
    finally:
        free(llm)


def test_chunked_prefill_equivalent(llama_baseline):
    folder, prompts, expected = llama_baseline
    llm = make_llm(folder, max_num_batched_tokens=32, enable_prefix_caching=False)
    try:
        assert generate(llm, prompts) == expected
    finally:
        free(llm)


def test_prefix_caching_equivalent(llama_baseline):
    folder, prompts, expected = llama_baseline
    shared = prompts[5][:96]                     # six full blocks of 16
    variants = [shared + p[:8] for p in prompts[:4]]
    llm = make_llm(folder, enforce_eager=True, enable_prefix_caching=False)
    try:
        want = generate(llm, variants)
    finally:
        free(llm)
    llm = make_llm(folder, enable_prefix_caching=True)
    try:
        first = generate(llm, variants[:1])
        rest = generate(llm, variants)              # hits the cached prefix
        again = generate(llm, variants)
    finally:
        free(llm)
    assert first == want[:1] and rest == want and again == want


def test_gpu_sampling_seeded_and_filters(models):
    from vllm_core import SamplingParams

    folder, hf = models["qwen2"]
    prompts = random_prompts([10, 20, 30, 40], hf.config.vocab_size, seed=4)
    llm = make_llm(folder)
    try:
        seeded = SamplingParams(temperature=0.8, top_k=20, top_p=0.9, min_p=0.01, seed=7,
                                max_tokens=MAX_TOKENS, ignore_eos=True,
                                repetition_penalty=1.2, presence_penalty=0.3,
                                frequency_penalty=0.2)
        alone = llm.generate([{"prompt_token_ids": prompts[0]}], seeded, use_tqdm=False)
        mixed = llm.generate([{"prompt_token_ids": p} for p in prompts],
                             [seeded] + [SamplingParams(temperature=1.0, max_tokens=MAX_TOKENS,
                                                        ignore_eos=True)] * 3, use_tqdm=False)
        assert alone[0].outputs[0].token_ids == mixed[0].outputs[0].token_ids
        # top_k=1 is greedy whatever the temperature
        greedy = generate(llm, prompts)
        top1 = llm.generate([{"prompt_token_ids": p} for p in prompts],
                            SamplingParams(temperature=1.5, top_k=1, max_tokens=MAX_TOKENS,
                                           ignore_eos=True), use_tqdm=False)
        assert [list(o.outputs[0].token_ids) for o in top1] == greedy
        lp = llm.generate([{"prompt_token_ids": prompts[1]}],
                          SamplingParams(temperature=0.0, max_tokens=4, logprobs=3,
                                         prompt_logprobs=2, ignore_eos=True), use_tqdm=False)
        out = lp[0].outputs[0]
        assert len(out.logprobs) == 4 and len(lp[0].prompt_logprobs) == len(prompts[1])
    finally:
        free(llm)


def test_memory_profiling_sizes_cache_and_refuses_too_little(models):
    folder, _ = models["llama"]
    llm = make_llm(folder, num_gpu_blocks_override=None, gpu_memory_utilization=0.3,
                   max_model_len=512)
    try:
        worker = llm.llm_engine.executor.worker
        report = worker.memory_report
        total = torch.cuda.get_device_properties(0).total_memory
        kv_bytes = report["kv_cache_gib"] * 2**30
        assert 0.15 * total < kv_bytes < 0.3 * total
        assert llm.llm_engine.config.cache.num_blocks > 512 // 16
    finally:
        free(llm)
    with pytest.raises(ValueError, match="not enough GPU memory for one request"):
        make_llm(folder, num_gpu_blocks_override=None, gpu_memory_utilization=0.001)


def test_attention_backend_selection_explains_refusal(models):
    """An installed FlashAttention / FlashInfer is selected when named (in bf16: neither
    serves float32, which is refused in words); a missing one is refused naming the package."""
    import importlib.util

    folder, _ = models["llama"]
    for name, package in (("flash_attn", "flash_attn"), ("flashinfer", "flashinfer")):
        if importlib.util.find_spec(package) is not None:
            with pytest.raises(ValueError, match=f"{name}: dtype float32 not in"):
                make_llm(folder, attention_backend=name)
            llm = make_llm(folder, attention_backend=name, dtype="bfloat16")
            try:
                assert runner_of(llm).attn_backend.name == name
            finally:
                free(llm)
            continue
        with pytest.raises(ValueError, match=name) as err:
            make_llm(folder, attention_backend=name)
        assert "not installed" in str(err.value) or "cannot be imported" in str(err.value)
    llm = make_llm(folder, attention_backend="triton", enforce_eager=True)
    try:
        assert runner_of(llm).attn_backend.name == "triton" and runner_of(llm).graphs is None
    finally:
        free(llm)


def test_flashinfer_bf16_parity_within_top_k(models):
    """The flashinfer backend (mixed prefill chunks and decodes in one paged-prefill run) on
    the real engine: HF's greedy tokens, or ours within HF's top-5 at the first divergence.
    Needs the ``flashinfer-python`` package (benchmarks/gpu_jobs/issue11.sh installs it)."""
    pytest.importorskip("flashinfer", reason="flashinfer-python is not installed")
    folder, hf = models["llama"]
    hf16 = hf.to("cuda", dtype=torch.bfloat16)
    prompts = random_prompts([12, 40, 7, 100, 3], hf.config.vocab_size, seed=5)
    # A small token budget forces chunked prefill next to decodes in the same step.
    llm = make_llm(folder, dtype="bfloat16", attention_backend="flashinfer",
                   max_num_batched_tokens=48)
    try:
        assert runner_of(llm).attn_backend.name == "flashinfer"
        ours = generate(llm, prompts)
    finally:
        free(llm)
    for prompt, got in zip(prompts, ours):
        ref, tops = hf_greedy(hf16, prompt, MAX_TOKENS)
        assert_parity(got, ref, tops)
    hf.to("cpu", dtype=torch.float32)
