"""The EAGLE proposer (``{"method": "eagle" | "eagle3", "model": PATH}``), worker side.

One algorithm drives both head layouts (``EagleHeadBase``); they differ in what they read
from the target and how they score. EAGLE-1 (this module, ``Eagle1Head``; as published for
Llama targets): a folder with ``config.json`` (a one-layer Llama config with the target's
hidden size and vocabulary) and safetensors holding ``fc.weight`` [H, 2H] (and optionally
``fc.bias``), one decoder layer ``layers.0.{self_attn.{q,k,v,o}_proj, mlp.{gate,up,down}_proj,
post_attention_layernorm}`` (the first layer has no input norm) and optionally
``embed_tokens.weight`` (else the target's embedding is used); names may carry a ``model.``
prefix. It reads the target's final hidden states; the target's LM head scores its output.
EAGLE-3 (``spec_decode/eagle3.py``): three auxiliary layers of the target fused by ``fc``, a
layer over [embedding, hidden], its own norm and LM head over a smaller draft vocabulary.

The head at position ``j`` reads ``(t[j+1], f[j])``, where ``f[j]`` is the target's feature
at position ``j`` (computed while the target predicted ``t[j+1]``), runs its layer (attending
to its own KV cache at positions ``<= j``) and returns ``h[j]``, whose logits predict
``t[j+2]``, and the state it feeds forward. Per step, for a request with known tokens
``t[0 .. L-1]``:

1. catch-up over head positions ``done .. L-2`` with the target's stored features; the last
   row gives draft 1 (a prediction of ``t[L]``);
2. ``k - 1`` single steps: at position ``L-2+i`` the head reads ``(draft i, g[L-3+i])``, the
   state its own previous step fed forward standing in for the target's feature.

The target's features come from ``observe_forward`` after each target forward (the rows
of a request's scheduled positions; a rollback overwrites the rejected ones; at most
``max_num_batched_tokens`` rows per request are kept). Positions
whose target features were never seen (a prefix-cache hit; a CUDA-graph decode step, whose
hidden states stay inside the graph) are skipped: the head attends there to whatever its
cache holds, which can lower acceptance but never changes the output (the target verifies).
The KV cache and sampling are as for the draft model (``draft_model``).
"""

from __future__ import annotations

import dataclasses
from abc import abstractmethod
from typing import TYPE_CHECKING, Any, ClassVar

import numpy as np
import torch
from torch import nn

from vllm_core.logger import init_logger
from vllm_core.messages import NewRequestData, SchedulerOutput
from vllm_core.spec_decode.config import SpeculativeConfig
from vllm_core.spec_decode.draft_forward import catch_up_pieces, piece_arrays
from vllm_core.spec_decode.draft_model import DraftChooser, check_draft_vocab
from vllm_core.spec_decode.paged_proposer import PagedDraftProposer, draft_checkpoint

if TYPE_CHECKING:  # pragma: no cover
    from vllm_core.worker.model_runner import ModelRunner

logger = init_logger(__name__)


class EagleHeadBase(nn.Module):
    """A one-layer EAGLE head over its own paged KV cache (``num_kv_heads`` x ``head_dim``).

    ``feature_size``: the width of one target feature row (``target_features``); the state a
    step feeds forward has the head's hidden size."""

    feature_size: int
    num_kv_heads: int
    head_dim: int

    @abstractmethod
    def target_features(self, hidden: Any) -> torch.Tensor | None:
        """The features [T, feature_size] of the target forward that just ran (``hidden``: its
        output; None when not a tensor, e.g. a graph replay) or None when there are none."""

    @abstractmethod
    def forward(self, input_ids: torch.Tensor, features: torch.Tensor,
                positions: torch.Tensor, kv_cache: torch.Tensor, attn_metadata: Any,
                from_target: bool) -> tuple[torch.Tensor, torch.Tensor]:
        """``(out, fed_forward)`` [T, H] each, for tokens ``input_ids`` at ``positions``;
        ``features`` are target features (``from_target``) or the head's own fed-forward
        states of the previous step."""

    @abstractmethod
    def compute_logits(self, out: torch.Tensor) -> torch.Tensor:
        """Logits over the target's vocabulary [T, V] of ``out``."""


class Eagle1Head(EagleHeadBase):
    """fc over [embedding, feature], one pre-norm-less decoder layer; the target's LM head
    scores its output, which is also what it feeds forward. ``layer`` is a core
    ``DecoderLayer`` (its input norm is not applied)."""

    def __init__(self, fc: nn.Linear, layer: nn.Module, embed: nn.Module, logits: Any,
                 num_kv_heads: int, head_dim: int) -> None:
        super().__init__()
        self.fc = fc
        self.layer = layer
        self.embed_tokens = embed
        self._logits = logits
        self.feature_size = fc.out_features
        self.num_kv_heads = num_kv_heads
        self.head_dim = head_dim

    def target_features(self, hidden: Any) -> torch.Tensor | None:
        return hidden if isinstance(hidden, torch.Tensor) else None

    def forward(self, input_ids: torch.Tensor, features: torch.Tensor,
                positions: torch.Tensor, kv_cache: torch.Tensor, attn_metadata: Any,
                from_target: bool) -> tuple[torch.Tensor, torch.Tensor]:
        dtype = self.fc.weight.dtype
        x = self.fc(torch.cat([self.embed_tokens(input_ids).to(dtype), features.to(dtype)],
                              dim=-1))
        h = self.layer.self_attn(positions, x, kv_cache, attn_metadata)
        h, residual = self.layer.post_attention_layernorm(h, x)
        out = self.layer.mlp(h) + residual
        return out, out

    def compute_logits(self, out: torch.Tensor) -> torch.Tensor:
        return self._logits(out)


def load_eagle1_head(runner: ModelRunner, path: str, dtype: torch.dtype) -> Eagle1Head:
    """The EAGLE-1 head of checkpoint folder ``path`` (layout in the module docstring)."""
    from vllm_core.model_executor.loader import build_model, load_arch_config
    from vllm_core.model_executor.safetensors_loader import iter_safetensors_lazy
    from vllm_core.model_executor.weight_source import read_full

    target = runner.model
    if not hasattr(getattr(target, "model", None), "embed_tokens"):
        raise ValueError(f"EAGLE heads need a Llama-family target; "
                         f"{type(target).__name__} is not one")
    arch = load_arch_config(path)
    check_draft_vocab(runner.arch, arch, path)
    if arch.hidden_size != runner.arch.hidden_size:
        raise ValueError(f"EAGLE head {path} has hidden_size {arch.hidden_size}, the "
                         f"target {runner.arch.hidden_size}")
    one = dataclasses.replace(arch, num_hidden_layers=1, tie_word_embeddings=True)
    fc_tensors = {}
    names = set()
    for name, source in iter_safetensors_lazy(path):       # pass 1: names and fc
        name = eagle_name(name)
        names.add(name)
        if name.startswith("fc."):
            fc_tensors[name] = read_full(source)
    if "fc.weight" not in fc_tensors:
        raise ValueError(f"{path} is not an EAGLE checkpoint: it has no fc.weight "
                         f"(names: {sorted(names)[:6]} ...)")
    # pass 2: a one-layer decoder hosts the layer (and the head's own embedding, if any)
    inner = build_model(one, runner.attn_backend, runner.device, dtype, runner.ops)
    inner.load_weights((f"model.{n}", t) for n, t in (
        (eagle_name(n), t) for n, t in iter_safetensors_lazy(path))
        if n.startswith("layers.0.") or n == "embed_tokens.weight")
    embed = (inner.model.embed_tokens if "embed_tokens.weight" in names
             else target.model.embed_tokens)
    fc = nn.Linear(2 * arch.hidden_size, arch.hidden_size, bias="fc.bias" in fc_tensors,
                   device=runner.device, dtype=dtype)
    with torch.no_grad():
        fc.weight.copy_(fc_tensors["fc.weight"])
        if fc.bias is not None:
            fc.bias.copy_(fc_tensors["fc.bias"])
    head = Eagle1Head(fc, inner.model.layers[0], embed, target.compute_logits,
                      one.num_key_value_heads, one.head_dim)
    logger.info("EAGLE head: %s (%s)", path, dtype)
    return head.requires_grad_(False).eval()


@dataclasses.dataclass(slots=True)
class _Features:
    """The target's features of one request at positions ``start ..``."""

    start: int
    rows: torch.Tensor

    def put(self, start: int, rows: torch.Tensor) -> _Features:
        """These features with ``rows`` at ``start ..`` (later positions are dropped)."""
        end = self.start + self.rows.shape[0]
        if start < self.start or start > end:
            return _Features(start, rows)
        return _Features(self.start, torch.cat([self.rows[:start - self.start], rows]))

    def take(self, start: int, end: int) -> torch.Tensor | None:
        if start < self.start or end > self.start + self.rows.shape[0]:
            return None
        return self.rows[start - self.start:end - self.start]


class EagleProposer(PagedDraftProposer):
    """See the module docstring."""

    needs_target_hidden: ClassVar[bool] = True

    def __init__(self, runner: ModelRunner, head: EagleHeadBase, dtype: torch.dtype) -> None:
        super().__init__(runner, 1, head.num_kv_heads, head.head_dim, dtype)
        self.head = head
        self.features: dict[str, _Features] = {}

    @classmethod
    def load(cls, runner: ModelRunner, spec: SpeculativeConfig) -> EagleProposer:
        """The proposer of ``spec`` ("eagle": an EAGLE-1 head, "eagle3": an EAGLE-3 head)."""
        path = draft_checkpoint(runner, spec)
        dtype = getattr(torch, spec.dtype or runner.config.model.dtype)
        if spec.method == "eagle3":
            from vllm_core.spec_decode.eagle3 import load_eagle3_head

            return cls(runner, load_eagle3_head(runner, path, dtype), dtype)
        return cls(runner, load_eagle1_head(runner, path, dtype), dtype)

    # ------------------------------------------------------------------ state
    def resume_position(self, new: NewRequestData) -> int:
        return new.num_computed_tokens

    def forget(self, req_id: str) -> None:
        super().forget(req_id)
        self.features.pop(req_id, None)

    def update_states(self, so: SchedulerOutput) -> None:
        super().update_states(so)
        for new in so.scheduled_new_reqs:
            self.features.pop(new.req_id, None)

    def observe_forward(self, runner: ModelRunner, plan: Any, hidden: Any) -> None:
        rows_all = self.head.target_features(hidden)
        if rows_all is None:                     # graph replay / not the last stage
            return
        qsl = plan.query_start_loc.tolist()
        for i, req_id in enumerate(plan.order):
            start = int(plan.num_computed[i])
            rows = rows_all[qsl[i]:qsl[i + 1]]
            old = self.features.get(req_id)
            feats = (_Features(start, rows.clone()) if old is None else old.put(start, rows))
            extra = feats.rows.shape[0] - self.budget
            if extra > 0:           # bounded: a request that never drafts keeps its last rows
                feats = _Features(feats.start + extra, feats.rows[extra:])
            self.features[req_id] = feats

    # ------------------------------------------------------------------ proposing
    def _run_head(self, table: Any, slots: np.ndarray, starts: np.ndarray, lens: np.ndarray,
                  input_ids: np.ndarray | torch.Tensor, features: torch.Tensor,
                  from_target: bool) -> tuple[torch.Tensor, torch.Tensor, Any]:
        """One head forward over pieces: ``(out, fed_forward, plan)``."""
        fed: list[torch.Tensor] = []

        def run(ids, positions, kv_caches, md, plan):
            out, state = self.head(ids, features, positions, kv_caches[0], md, from_target)
            fed.append(state)
            return out

        out, plan = self.cache.forward(run, table, slots, starts, lens, input_ids)
        return out, fed[0], plan

    def propose(self, runner: ModelRunner, counts: dict[str, int]
                ) -> tuple[dict[str, list[int]], dict[str, torch.Tensor]]:
        table = runner.table
        req_ids, slots, known, done = self.request_arrays(runner, counts)
        n = len(req_ids)
        end = known - 1                                   # head positions 0 .. L-2
        for i, r in enumerate(req_ids):                   # skip positions never seen
            feats = self.features.get(r)
            first = feats.start if feats is not None else int(end[i]) - 1
            done[i] = min(max(int(done[i]), first), int(end[i]) - 1)
        chooser = DraftChooser(runner, req_ids, self.generators)
        dev = self.cache.device
        last_out: list[torch.Tensor | None] = [None] * n
        last_fed: list[torch.Tensor | None] = [None] * n

        for pieces in catch_up_pieces(done, end, self.budget):
            idx, starts, lens, positions = piece_arrays(pieces)
            ids = table.token_ids[np.repeat(slots[idx], lens), positions + 1]
            feats = []
            for i, s, m in zip(idx.tolist(), starts.tolist(), lens.tolist()):
                stored = self.features.get(req_ids[i])
                rows = stored.take(s, s + m) if stored is not None else None
                feats.append(rows if rows is not None
                             else torch.zeros(m, self.head.feature_size, device=dev))
            out, fed, plan = self._run_head(table, slots[idx], starts, lens, ids,
                                            torch.cat(feats), from_target=True)
            rows = plan.query_start_loc[1:] - 1
            for j, i in enumerate(idx.tolist()):
                if starts[j] + lens[j] == end[i]:
                    last_out[i], last_fed[i] = out[int(rows[j])], fed[int(rows[j])]
        for i, r in enumerate(req_ids):
            self.computed[r] = int(end[i])
            stored = self.features.get(r)
            if stored is not None:                        # keep from the next needed position
                cut = max(0, min(int(end[i]) - stored.start, stored.rows.shape[0]))
                self.features[r] = _Features(stored.start + cut, stored.rows[cut:])
        h = torch.stack(last_fed)
        tokens = chooser.choose(self.head.compute_logits(torch.stack(last_out)).float(),
                                np.arange(n))

        def step(j: int, active: np.ndarray, previous: torch.Tensor) -> torch.Tensor:
            nonlocal h                                    # the states the last step fed
            act = torch.from_numpy(active).to(dev)
            out, fed, _ = self._run_head(table, slots[active], end[active] + j - 1,
                                         np.ones(len(active), dtype=np.int64), previous,
                                         h[act], from_target=False)
            h = torch.zeros_like(h)
            h[act] = fed
            return self.head.compute_logits(out)

        return self.draft_runs(counts, req_ids, tokens, chooser, step)


def eagle_name(name: str) -> str:
    """A checkpoint tensor name without the ``model.`` prefix some EAGLE exports carry."""
    return name[len("model."):] if name.startswith("model.") else name
