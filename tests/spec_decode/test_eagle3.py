"""EAGLE-3 heads on random weights of the published checkpoint layout (``fc`` over three
auxiliary target layers, ``midlayer.*`` reading [embedding, hidden], its own norm and LM head
over a smaller draft vocabulary mapped by ``d2t``) for a random-weight Llama target (CPU):

- the target's auxiliary states equal HF's ``output_hidden_states`` at the named layers;
- the head (paged, catch-up then a fed-forward step) equals a direct torch transcription of
  the EAGLE-3 formula on the same weights;
- greedy tokens are identical with and without speculation (mixed batch, prefix caching,
  preemption); seeded sampling is reproducible;
- a head built to predict the target exactly is accepted 100%;
- a wrong layout, a hidden-size mismatch and a sharded target are refused clearly.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from types import SimpleNamespace

import pytest
import torch
from test_draft_model import LLAMA, greedy, make_llm, prompts, save_llama
from test_eagle import assert_seeded_sampling_reproducible, generate, save_eagle_head

from vllm_core.model_executor.models.aux_hidden import AuxHiddenCapture
from vllm_core.model_executor.testing import (
    random_hf_causal_lm,
    write_random_eagle3_head,
    write_wordlevel_tokenizer,
)

TARGET_LAYERS = 4              # default auxiliary layers (2, 2, 1)
HIDDEN = LLAMA["hidden_size"]
HEAD = dict(LLAMA, num_hidden_layers=1)
DRAFT_VOCAB = 96
BLOCK_SIZE = 4


def draft_ids(seed: int, size: int = DRAFT_VOCAB) -> torch.Tensor:
    """The target ids of a draft vocabulary: a sorted random subset."""
    gen = torch.Generator().manual_seed(seed)
    return torch.randperm(LLAMA["vocab_size"], generator=gen)[:size].sort().values


def save_eagle3_head(path: str, seed: int, vocab: torch.Tensor | None = None,
                     tensors: dict[str, torch.Tensor] | None = None,
                     **config_overrides) -> str:
    """An EAGLE-3 head in the published layout for the ``LLAMA`` target shape: random
    weights (or ``tensors``), draft vocabulary ``vocab`` (target ids, sorted)."""
    return write_random_eagle3_head(path, LLAMA, draft_ids(seed) if vocab is None else vocab,
                                    seed=seed, tensors=tensors, rms_norm_eps=1e-6,
                                    **config_overrides)


@pytest.fixture(scope="module")
def folders(tmp_path_factory) -> dict[str, str]:
    root = tmp_path_factory.mktemp("eagle3")
    return {"target": save_llama(str(root / "target"), seed=0,
                                 num_hidden_layers=TARGET_LAYERS),
            "head": save_eagle3_head(str(root / "head"), seed=3)}


def eagle3(path: str, k: int = 3, **extra) -> dict:
    return {"method": "eagle3", "model": path, "num_speculative_tokens": k, **extra}


@pytest.fixture(scope="module")
def baseline(folders):
    llm, _ = make_llm(folders["target"])
    return generate(llm, greedy(24))


# ---------------------------------------------------------------- the pieces, against torch
def _target_model(folder: str):
    from vllm_core.attention.backends.reference import ReferenceAttentionBackend
    from vllm_core.config import ModelConfig
    from vllm_core.model_executor.loader import get_model, load_arch_config

    arch = load_arch_config(folder)
    config = ModelConfig(model=folder, dtype="float32", arch=arch)
    return get_model(config, ReferenceAttentionBackend, torch.device("cpu")), arch


@torch.no_grad()
def test_aux_capture_matches_hf_hidden_states(folders):
    """Two requests in one batch; layer ids in a chosen order, with a repeat and layer 0."""
    from transformers import AutoModelForCausalLM

    from vllm_core.attention.backends.reference import ReferenceAttentionBackend
    from vllm_core.model_executor.batch_utils import make_batch_layout

    model, arch = _target_model(folders["target"])
    ids = (3, 0, 2, 2)
    model.model.aux_capture = capture = AuxHiddenCapture(ids)
    seqs = [prompts()[0], prompts()[2]]
    layout = make_batch_layout([0, 0], [len(s) for s in seqs], BLOCK_SIZE)
    shape = ReferenceAttentionBackend.get_kv_cache_shape(
        32, BLOCK_SIZE, arch.num_key_value_heads, arch.head_dim)
    builder = ReferenceAttentionBackend.get_builder_cls()(BLOCK_SIZE, torch.device("cpu"))
    model(torch.tensor(seqs[0] + seqs[1]), layout.positions,
          [torch.zeros(shape) for _ in range(arch.num_hidden_layers)],
          builder.build(layout.metadata))
    got = capture.take().split([len(s) for s in seqs])
    hf = AutoModelForCausalLM.from_pretrained(folders["target"], dtype=torch.float32).eval()
    for seq, rows in zip(seqs, got):
        states = hf(torch.tensor([seq]), output_hidden_states=True).hidden_states
        want = torch.cat([states[i][0] for i in ids], dim=-1)
        torch.testing.assert_close(rows, want, rtol=1e-4, atol=1e-4)
    assert capture.take() is None                 # taken once


def _rms(x: torch.Tensor, w: torch.Tensor, eps: float = 1e-6) -> torch.Tensor:
    return x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + eps) * w


def _rope(x: torch.Tensor, positions: torch.Tensor, theta: float = 10000.0) -> torch.Tensor:
    d = x.shape[-1]
    inv = 1.0 / theta ** (torch.arange(0, d, 2, dtype=torch.float32) / d)
    ang = positions[:, None].float() * inv[None]
    cos, sin = torch.cat([ang.cos()] * 2, -1)[:, None], torch.cat([ang.sin()] * 2, -1)[:, None]
    rot = torch.cat([-x[..., d // 2:], x[..., :d // 2]], dim=-1)
    return x * cos + rot * sin


def reference_head(w: dict[str, torch.Tensor], embed: torch.Tensor, ids: torch.Tensor,
                   f: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """The EAGLE-3 layer over one sequence at positions 0.. (causal), written from the
    formula: ``f`` [T, H] are the fused target states (or fed-forward states) per row.
    Returns (out [T, H] after the final norm, pre-norm state [T, H])."""
    heads, kv = HEAD["num_attention_heads"], HEAD["num_key_value_heads"]
    hd = HIDDEN // heads
    p = "midlayer."
    x = torch.cat([_rms(embed[ids], w[p + "input_layernorm.weight"]),
                   _rms(f, w[p + "hidden_norm.weight"])], dim=-1)
    t = x.shape[0]
    pos = torch.arange(t)
    q = _rope((x @ w[p + "self_attn.q_proj.weight"].T).view(t, heads, hd), pos)
    k = _rope((x @ w[p + "self_attn.k_proj.weight"].T).view(t, kv, hd), pos)
    v = (x @ w[p + "self_attn.v_proj.weight"].T).view(t, kv, hd)
    k, v = k.repeat_interleave(heads // kv, 1), v.repeat_interleave(heads // kv, 1)
    scores = torch.einsum("qhd,khd->hqk", q, k) / hd ** 0.5
    scores = scores.masked_fill(torch.ones(t, t, dtype=torch.bool).triu(1), float("-inf"))
    attn = torch.einsum("hqk,khd->qhd", scores.softmax(-1), v).reshape(t, heads * hd)
    r = attn @ w[p + "self_attn.o_proj.weight"].T + f
    h = _rms(r, w[p + "post_attention_layernorm.weight"])
    m = torch.nn.functional.silu(h @ w[p + "mlp.gate_proj.weight"].T) * (
        h @ w[p + "mlp.up_proj.weight"].T)
    g = m @ w[p + "mlp.down_proj.weight"].T + r
    return _rms(g, w["norm.weight"]), g


@torch.no_grad()
def test_head_matches_reference(folders):
    """Catch-up over 9 positions from target features, then one step fed its own pre-norm
    state; outputs, fed-forward states and draft-vocabulary logits (mapped by d2t) equal the
    reference; logits outside the draft vocabulary are -inf."""
    from safetensors.torch import load_file

    from vllm_core.attention.backends.reference import ReferenceAttentionBackend
    from vllm_core.model_executor.batch_utils import make_batch_layout
    from vllm_core.spec_decode.eagle3 import load_eagle3_head

    model, arch = _target_model(folders["target"])
    runner = SimpleNamespace(model=model, arch=arch, attn_backend=ReferenceAttentionBackend,
                             device=torch.device("cpu"), ops=None)
    head = load_eagle3_head(runner, folders["head"], torch.float32)
    assert model.model.aux_capture is head.capture and head.capture.layer_ids == (2, 2, 1)
    w = load_file(os.path.join(folders["head"], "model.safetensors"))
    embed = model.model.embed_tokens.weight
    gen = torch.Generator().manual_seed(1)
    feats = torch.randn(9, 3 * HIDDEN, generator=gen)
    ids = torch.randint(0, LLAMA["vocab_size"], (10,), generator=gen)
    kv = torch.zeros(ReferenceAttentionBackend.get_kv_cache_shape(
        8, BLOCK_SIZE, HEAD["num_key_value_heads"], HIDDEN // HEAD["num_attention_heads"]))
    builder = ReferenceAttentionBackend.get_builder_cls()(BLOCK_SIZE, torch.device("cpu"))

    layout = make_batch_layout([0], [9], BLOCK_SIZE)
    out, fed = head(ids[:9], feats, layout.positions, kv, builder.build(layout.metadata),
                    from_target=True)
    layout = make_batch_layout([9], [1], BLOCK_SIZE)
    out1, fed1 = head(ids[9:], fed[-1:], layout.positions, kv,
                      builder.build(layout.metadata), from_target=False)

    f = feats @ w["fc.weight"].T
    want_out, want_g = reference_head(w, embed, ids[:9], f)
    torch.testing.assert_close(out, want_out, rtol=1e-4, atol=1e-4)
    torch.testing.assert_close(fed, want_g, rtol=1e-4, atol=1e-4)
    want_out, want_g = reference_head(w, embed, ids, torch.cat([f, want_g[-1:]]))
    torch.testing.assert_close(out1, want_out[-1:], rtol=1e-4, atol=1e-4)
    torch.testing.assert_close(fed1, want_g[-1:], rtol=1e-4, atol=1e-4)

    logits = head.compute_logits(out1)
    vocab = draft_ids(3)
    torch.testing.assert_close(logits[:, vocab], want_out[-1:] @ w["lm_head.weight"].T,
                               rtol=1e-4, atol=1e-4)
    rest = torch.ones(LLAMA["vocab_size"], dtype=torch.bool)
    rest[vocab] = False
    assert torch.isneginf(logits[:, rest]).all()


@torch.no_grad()
def test_prefixed_names_load_the_same_head(folders, tmp_path):
    """Exports that spell the tensors ``model.midlayer.*`` / ``layers.0.*`` load the same head."""
    from safetensors.torch import load_file, save_file

    from vllm_core.attention.backends.reference import ReferenceAttentionBackend
    from vllm_core.spec_decode.eagle3 import load_eagle3_head

    w = load_file(os.path.join(folders["head"], "model.safetensors"))
    renamed = {("layers.0." + k[len("midlayer."):] if k.startswith("midlayer.")
                else "model." + k): v for k, v in w.items()}
    other = str(tmp_path / "renamed")
    os.makedirs(other)
    save_file(renamed, os.path.join(other, "model.safetensors"))
    with open(os.path.join(folders["head"], "config.json")) as src, \
            open(os.path.join(other, "config.json"), "w") as dst:
        dst.write(src.read())
    model, arch = _target_model(folders["target"])
    runner = SimpleNamespace(model=model, arch=arch, attn_backend=ReferenceAttentionBackend,
                             device=torch.device("cpu"), ops=None)
    a = load_eagle3_head(runner, folders["head"], torch.float32).state_dict()
    b = load_eagle3_head(runner, other, torch.float32).state_dict()
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


# ---------------------------------------------------------------- the engine
def test_eagle3_greedy_identical_mixed_batch_prefix_cache(folders, baseline):
    from vllm_core import SamplingParams

    llm, counter = make_llm(folders["target"], eagle3(folders["head"]),
                            enable_prefix_caching=True)
    assert generate(llm, greedy(24)) == baseline
    assert counter.draft_tokens > 0
    params = [greedy(24), SamplingParams(temperature=0.0, max_tokens=1, ignore_eos=True),
              greedy(24), greedy(24), SamplingParams(temperature=0.0, max_tokens=2,
                                                     ignore_eos=True)]
    got = [list(o.outputs[0].token_ids) for o in llm.generate(
        [{"prompt_token_ids": p} for p in prompts()], params, use_tqdm=False)]
    assert got == [b[:p.max_tokens] for b, p in zip(baseline, params)]


@pytest.mark.slow
def test_eagle3_greedy_identical_under_preemption(folders, baseline):
    llm, counter = make_llm(folders["target"], eagle3(folders["head"], k=2),
                            num_gpu_blocks_override=14, max_num_batched_tokens=32,
                            enable_prefix_caching=True)
    assert generate(llm, greedy(24)) == baseline
    assert counter.draft_tokens > 0 and counter.preemptions > 0


def test_eagle3_seeded_sampling_reproducible(folders):
    assert_seeded_sampling_reproducible(folders["target"], eagle3(folders["head"], k=2))


def test_eagle3_bf16_head_async_scheduling(folders, baseline):
    """A bfloat16 head (its own KV cache dtype) on a float32 target, async scheduling on."""
    llm, counter = make_llm(folders["target"], eagle3(folders["head"], dtype="bfloat16"),
                            async_scheduling=True)
    assert generate(llm, greedy(24)) == baseline
    assert counter.draft_tokens > 0


# ---------------------------------------------------------------- a head that predicts exactly
@dataclass
class PermutationTarget:
    """A target whose greedy next token is a fixed permutation ``s`` of a token set S (64
    target ids, also the heads' draft vocabulary) applied to the current token.

    Every layer's o_proj and down_proj are zero, so the residual stream (hence every
    auxiliary state) is the token's embedding e(x), and the LM head's row s(x) is
    ``unit(x) = u(x) / |u(x)|`` with ``u(x) = norm(e(x))``: by Cauchy-Schwarz the argmax is
    s(x) (ids outside S score 0)."""

    tokens: torch.Tensor          # S, sorted
    step: torch.Tensor            # s on S, identity elsewhere
    norm_w: torch.Tensor          # the final norm's weight
    unit: torch.Tensor            # unit(x) for every id

    def prompts(self) -> list[list[int]]:
        pick = torch.Generator().manual_seed(6)
        return [self.tokens[torch.randint(0, 64, (n,), generator=pick)].tolist()
                for n in (7, 20, 3)]

    def lm_rows(self, prediction: torch.Tensor) -> torch.Tensor:
        """A draft LM head whose argmax for a state u(x) is ``prediction[x]`` (a bijection of
        S): draft row of ``prediction[x]`` = unit(x)."""
        index = {int(t): d for d, t in enumerate(self.tokens.tolist())}
        rows = torch.zeros(len(self.tokens), HIDDEN)
        for x in self.tokens.tolist():
            rows[index[int(prediction[x])]] = self.unit[x]
        return rows


def permutation_target(folder: str) -> PermutationTarget:
    vocab_size = LLAMA["vocab_size"]
    hf = random_hf_causal_lm("llama", {**LLAMA, "num_hidden_layers": TARGET_LAYERS}, seed=4,
                             weight_scale=0.3)
    gen = torch.Generator().manual_seed(4)
    tokens = draft_ids(11, 64)
    step = torch.arange(vocab_size)
    step[tokens] = tokens[torch.randperm(64, generator=gen)]
    sd = {k: v.clone() for k, v in hf.state_dict().items()}
    for name in sd:
        if name.endswith(("o_proj.weight", "down_proj.weight")):
            sd[name].zero_()
    u = _rms(sd["model.embed_tokens.weight"], sd["model.norm.weight"])
    unit = u / u.norm(dim=-1, keepdim=True)
    sd["lm_head.weight"] = torch.zeros(vocab_size, HIDDEN)
    sd["lm_head.weight"][step[tokens]] = unit[tokens]            # row s(x) = unit(x)
    hf.load_state_dict(sd)
    hf.save_pretrained(folder)
    write_wordlevel_tokenizer(folder, vocab_size)
    return PermutationTarget(tokens, step, sd["model.norm.weight"].clone(), unit)


def exact_head(folder: str, target: PermutationTarget, reads: str) -> str:
    """An EAGLE-3 head that predicts ``target`` exactly (random weights, then exact ones).

    ``reads="aux"``: from the auxiliary state at position j (e(t[j])) it predicts
    t[j+2] = s(s(t[j])): ``fc`` passes the first auxiliary state through, o_proj and down_proj
    are zero, so the output is norm(e(t[j])) = u(t[j]) (the target's norm weight), scored by
    rows unit(x) at s(s(x)). Its later steps (fed its own state, not told the new token)
    repeat draft 1, so only draft 1 is exact.

    ``reads="token"``: one attention head of width H with q = k = 4 * input_layernorm(embed)
    and v = input_layernorm(embed), o_proj = I: every token's key has the same norm (RMS-normed
    embeddings), so by Cauchy-Schwarz a position attends (up to e^-100) to itself or to the
    same token elsewhere: the attention output is the current token's normed embedding.
    ``hidden_norm`` is zero and ``norm_before_residual`` set, so neither the target's states
    nor the fed-forward ones enter; the output is u(t[j+1]), scored by rows unit(x) at s(x):
    it predicts t[j+2] = s(t[j+1]) at every step, so all k drafts are exact."""
    from safetensors.torch import load_file, save_file

    shape = dict(LLAMA) if reads == "aux" else {**LLAMA, "num_attention_heads": 1,
                                                 "num_key_value_heads": 1}
    extra = {} if reads == "aux" else {"norm_before_residual": True}
    write_random_eagle3_head(folder, shape, target.tokens, seed=5, rms_norm_eps=1e-6, **extra)
    w = load_file(os.path.join(folder, "model.safetensors"))
    w["midlayer.mlp.down_proj.weight"].zero_()
    w["norm.weight"] = target.norm_w.clone()
    zeros, eye = torch.zeros(HIDDEN, HIDDEN), torch.eye(HIDDEN)
    if reads == "aux":
        w["fc.weight"] = torch.cat([eye, zeros, zeros], dim=1)
        w["midlayer.self_attn.o_proj.weight"].zero_()
        w["lm_head.weight"] = target.lm_rows(target.step[target.step])
    else:
        w["midlayer.input_layernorm.weight"] = torch.ones(HIDDEN)
        w["midlayer.hidden_norm.weight"] = torch.zeros(HIDDEN)
        for name, scale in (("q", 4.0), ("k", 4.0), ("v", 1.0)):
            w[f"midlayer.self_attn.{name}_proj.weight"] = torch.cat([scale * eye, zeros], 1)
        w["midlayer.self_attn.o_proj.weight"] = eye.clone()
        w["lm_head.weight"] = target.lm_rows(target.step)
    save_file({k: v.contiguous() for k, v in w.items()},
              os.path.join(folder, "model.safetensors"))
    return folder


def test_heads_that_predict_the_target_are_accepted_fully(tmp_path):
    """Draft 1 from the auxiliary states (k = 1), and every draft from the tokens (k = 3):
    accepted 100%, tokens identical to the plain engine's."""
    target = permutation_target(str(tmp_path / "target"))
    prompt_list = target.prompts()
    ref, _ = make_llm(str(tmp_path / "target"))
    want = generate(ref, greedy(20), prompt_list)
    assert len({t for seq in want for t in seq}) > 8            # not a constant output
    for reads, k in (("aux", 1), ("token", 3)):
        head = exact_head(str(tmp_path / reads), target, reads)
        llm, counter = make_llm(str(tmp_path / "target"), eagle3(head, k=k))
        assert generate(llm, greedy(20), prompt_list) == want
        assert counter.draft_tokens > 0 and counter.accepted == counter.draft_tokens, reads
        if k > 1:
            assert counter.drafts < 3 * 20 / 3         # runs of k + 1 tokens per step
        del llm


# ---------------------------------------------------------------- errors
def test_eagle1_checkpoint_is_refused(folders):
    folder = os.path.join(os.path.dirname(folders["head"]), "eagle1")
    save_eagle_head(folder, seed=1)
    with pytest.raises(ValueError, match="not an EAGLE-3 head"):
        make_llm(folders["target"], eagle3(folder))


def test_layer_reading_one_width_is_refused(folders, tmp_path):
    """Right config, but q/k/v read H features (not [embedding, hidden])."""
    from safetensors.torch import load_file

    folder = save_eagle3_head(str(tmp_path / "narrow"), seed=2)
    w = load_file(os.path.join(folder, "model.safetensors"))
    for p in "qkv":
        name = f"midlayer.self_attn.{p}_proj.weight"
        w[name] = w[name][:, :HIDDEN].contiguous()
    save_eagle3_head(folder, seed=2, tensors={k: v for k, v in w.items()
                                              if k not in ("d2t", "t2d")})
    with pytest.raises(ValueError, match="expected 2 \\* hidden_size"):
        make_llm(folders["target"], eagle3(folder))


def test_pickle_only_head_is_refused_with_the_conversion(folders, tmp_path):
    """Published heads often ship pytorch_model.bin: refused (never unpickled), with the
    one-line conversion that works for a class transformers does not know."""
    folder = save_eagle3_head(str(tmp_path / "bin"), seed=2)
    os.rename(os.path.join(folder, "model.safetensors"),
              os.path.join(folder, "pytorch_model.bin"))
    with pytest.raises(ValueError, match="pickle.*weights_only=True"):
        make_llm(folders["target"], eagle3(folder))


def test_hidden_size_mismatch_is_refused(folders, tmp_path):
    folder = save_eagle3_head(str(tmp_path / "h32"), seed=2, target_hidden_size=32)
    with pytest.raises(ValueError, match="target hidden size of 32"):
        make_llm(folders["target"], eagle3(folder))


def test_aux_layers_outside_the_target_are_refused(folders, tmp_path):
    folder = save_eagle3_head(str(tmp_path / "ids"), seed=2,
                              eagle_aux_hidden_state_layer_ids=[1, 2, 9])
    with pytest.raises(ValueError, match="auxiliary layers \\[1, 2, 9\\]"):
        make_llm(folders["target"], eagle3(folder))


def test_sharded_target_is_refused():
    from vllm_core.spec_decode.config import parse_speculative_config
    from vllm_core.spec_decode.paged_proposer import draft_checkpoint

    runner = SimpleNamespace(parallel=SimpleNamespace(world_size=2))
    with pytest.raises(ValueError, match="'eagle3' needs tensor_parallel_size"):
        draft_checkpoint(runner, parse_speculative_config(eagle3("/x")))
