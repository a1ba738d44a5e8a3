"""The EAGLE proposer (``{"method": "eagle", "model": PATH}``), worker side.

Checkpoint layout (EAGLE-1, as published for Llama targets): a folder with ``config.json``
(a one-layer Llama config with the target's hidden size and vocabulary) and safetensors
holding ``fc.weight`` [H, 2H] (and optionally ``fc.bias``), one decoder layer
``layers.0.{self_attn.{q,k,v,o}_proj, mlp.{gate,up,down}_proj, post_attention_layernorm}``
(the first layer has no input norm) and optionally ``embed_tokens.weight`` (else the target's
embedding is used); names may carry a ``model.`` prefix. The target's LM head scores the
head's output.

The head at position ``j`` reads ``fc(concat(embed(t[j+1]), f[j]))``, where ``f[j]`` is the
target's final hidden state at position ``j`` (which predicted ``t[j+1]``), runs its layer
(attending to its own KV cache at positions ``<= j``) and returns ``h[j]``, whose logits
predict ``t[j+2]``. Per step, for a request with known tokens ``t[0 .. L-1]``:

1. catch-up over head positions ``done .. L-2`` with the target's stored hidden states; the
   last row gives draft 1 (a prediction of ``t[L]``);
2. ``k - 1`` single steps: at position ``L-2+i`` the head reads ``(draft i, h[L-3+i])``, its
   own previous output standing in for the target's state.

The target's hidden states come from ``observe_forward`` after each target forward (the rows
of a request's scheduled positions; a rollback overwrites the rejected ones; at most
``max_num_batched_tokens`` rows per request are kept). Positions
whose target states were never seen (a prefix-cache hit; a CUDA-graph decode step, whose
hidden states stay inside the graph) are skipped: the head attends there to whatever its
cache holds, which can lower acceptance but never changes the output (the target verifies).
The KV cache and sampling are as for the draft model (``draft_model``). EAGLE-3 (three
fused target layers, its own vocabulary map) is not built.
"""

from __future__ import annotations

import dataclasses
from typing import TYPE_CHECKING, Any

import numpy as np
import torch
from torch import nn

from vllm_core.logger import init_logger
from vllm_core.messages import SchedulerOutput
from vllm_core.spec_decode.config import SpeculativeConfig
from vllm_core.spec_decode.draft_forward import DraftCache, catch_up_pieces
from vllm_core.spec_decode.draft_model import DraftChooser, check_draft_vocab
from vllm_core.spec_decode.worker_proposer import WorkerProposer

if TYPE_CHECKING:  # pragma: no cover
    from vllm_core.worker.model_runner import ModelRunner

logger = init_logger(__name__)


class EagleHead(nn.Module):
    """fc over [embedding, feature], one pre-norm-less decoder layer; see the module
    docstring. ``layer`` is a core ``DecoderLayer`` (its input norm is not applied)."""

    def __init__(self, fc: nn.Linear, layer: nn.Module, embed: nn.Module) -> None:
        super().__init__()
        self.fc = fc
        self.layer = layer
        self.embed_tokens = embed

    def forward(self, input_ids: torch.Tensor, features: torch.Tensor, positions: torch.Tensor,
                kv_cache: torch.Tensor, attn_metadata: Any) -> torch.Tensor:
        dtype = self.fc.weight.dtype
        x = self.fc(torch.cat([self.embed_tokens(input_ids).to(dtype), features.to(dtype)],
                              dim=-1))
        h = self.layer.self_attn(positions, x, kv_cache, attn_metadata)
        h, residual = self.layer.post_attention_layernorm(h, x)
        return self.layer.mlp(h) + residual


@dataclasses.dataclass(slots=True)
class _Features:
    """The target's hidden states of one request at positions ``start ..``."""

    start: int
    rows: torch.Tensor

    def put(self, start: int, rows: torch.Tensor) -> _Features:
        """These states with ``rows`` at ``start ..`` (later positions are dropped)."""
        end = self.start + self.rows.shape[0]
        if start < self.start or start > end:
            return _Features(start, rows)
        return _Features(self.start, torch.cat([self.rows[:start - self.start], rows]))

    def take(self, start: int, end: int) -> torch.Tensor | None:
        if start < self.start or end > self.start + self.rows.shape[0]:
            return None
        return self.rows[start - self.start:end - self.start]


class EagleProposer(WorkerProposer):
    """See the module docstring."""

    def __init__(self, runner: ModelRunner, head: EagleHead, arch: Any, dtype: torch.dtype,
                 logits: Any) -> None:
        from vllm_core.attention.kv_cache_dtype import kv_cache_torch_dtype

        self.head = head
        self.compute_logits = logits
        self.cache = DraftCache(runner.attn_backend, runner.block_size, 1,
                                arch.num_key_value_heads, arch.head_dim,
                                kv_cache_torch_dtype(runner.config.cache.kv_cache_dtype,
                                                     dtype), runner.device)
        self.budget = int(runner.config.scheduler.max_num_batched_tokens or 2048)
        self.computed: dict[str, int] = {}       # head positions whose KV is valid
        self.features: dict[str, _Features] = {}
        self.generators: dict[str, torch.Generator] = {}

    @classmethod
    def load(cls, runner: ModelRunner, spec: SpeculativeConfig) -> EagleProposer:
        from vllm_core.model_executor.hub import locate_model
        from vllm_core.model_executor.loader import build_model, load_arch_config, resolve_model
        from vllm_core.model_executor.safetensors_loader import iter_safetensors_lazy

        if runner.parallel.world_size > 1:
            raise ValueError("speculative_config method 'eagle' needs tensor_parallel_size = "
                             "pipeline_parallel_size = 1")
        target = runner.model
        if not hasattr(getattr(target, "model", None), "embed_tokens"):
            raise ValueError(f"EAGLE heads need a Llama-family target; "
                             f"{type(target).__name__} is not one")
        path = resolve_model(locate_model(spec.model))
        arch = load_arch_config(path)
        check_draft_vocab(runner.arch, arch, path)
        if arch.hidden_size != runner.arch.hidden_size:
            raise ValueError(f"EAGLE head {path} has hidden_size {arch.hidden_size}, the "
                             f"target {runner.arch.hidden_size}")
        dtype = getattr(torch, spec.dtype or runner.config.model.dtype)
        from vllm_core.model_executor.weight_source import read_full

        one = dataclasses.replace(arch, num_hidden_layers=1, tie_word_embeddings=True)
        fc_tensors = {}
        names = set()
        for name, source in iter_safetensors_lazy(path):       # pass 1: names and fc
            name = _eagle_name(name)
            names.add(name)
            if name.startswith("fc."):
                fc_tensors[name] = read_full(source)
        if "fc.weight" not in fc_tensors:
            raise ValueError(f"{path} is not an EAGLE checkpoint: it has no fc.weight "
                             f"(names: {sorted(names)[:6]} ...)")
        # pass 2: a one-layer decoder hosts the layer (and the head's own embedding, if any)
        inner = build_model(one, runner.attn_backend, runner.device, dtype, runner.ops)
        inner.load_weights((f"model.{n}", t) for n, t in (
            (_eagle_name(n), t) for n, t in iter_safetensors_lazy(path))
            if n.startswith("layers.0.") or n == "embed_tokens.weight")
        embed = (inner.model.embed_tokens if "embed_tokens.weight" in names
                 else target.model.embed_tokens)
        fc = nn.Linear(2 * arch.hidden_size, arch.hidden_size, bias="fc.bias" in fc_tensors,
                       device=runner.device, dtype=dtype)
        with torch.no_grad():
            fc.weight.copy_(fc_tensors["fc.weight"])
            if fc.bias is not None:
                fc.bias.copy_(fc_tensors["fc.bias"])
        head = EagleHead(fc, inner.model.layers[0], embed).requires_grad_(False).eval()
        logger.info("EAGLE head: %s (%s)", path, dtype)
        return cls(runner, head, one, dtype, target.compute_logits)

    # ------------------------------------------------------------------ state
    def kv_cache_bytes_per_block(self) -> int:
        return self.cache.bytes_per_block()

    def initialize_cache(self, num_blocks: int) -> None:
        self.cache.allocate(num_blocks)

    def update_states(self, so: SchedulerOutput) -> None:
        for req_id in so.finished_req_ids:
            self.computed.pop(req_id, None)
            self.features.pop(req_id, None)
            self.generators.pop(req_id, None)
        for new in so.scheduled_new_reqs:
            self.computed[new.req_id] = new.num_computed_tokens
            self.features.pop(new.req_id, None)

    def observe_forward(self, runner: ModelRunner, plan: Any, hidden: Any) -> None:
        if not isinstance(hidden, torch.Tensor):       # graph replay / not the last stage
            return
        qsl = plan.query_start_loc.tolist()
        for i, req_id in enumerate(plan.order):
            start = int(plan.num_computed[i])
            rows = hidden[qsl[i]:qsl[i + 1]]
            old = self.features.get(req_id)
            feats = (_Features(start, rows.clone()) if old is None else old.put(start, rows))
            extra = feats.rows.shape[0] - self.budget
            if extra > 0:           # bounded: a request that never drafts keeps its last rows
                feats = _Features(feats.start + extra, feats.rows[extra:])
            self.features[req_id] = feats

    # ------------------------------------------------------------------ proposing
    def propose(self, runner: ModelRunner, counts: dict[str, int]
                ) -> tuple[dict[str, list[int]], dict[str, torch.Tensor]]:
        table = runner.table
        req_ids = list(counts)
        n = len(req_ids)
        slots = np.fromiter((table.slot_of[r] for r in req_ids), dtype=np.int64, count=n)
        known = table.num_tokens[slots].copy()
        end = known - 1                                   # head positions 0 .. L-2
        done = np.fromiter((self.computed.get(r, 0) for r in req_ids), dtype=np.int64, count=n)
        for i, r in enumerate(req_ids):                   # skip positions never seen
            feats = self.features.get(r)
            first = feats.start if feats is not None else int(end[i]) - 1
            done[i] = min(max(int(done[i]), first), int(end[i]) - 1)
        chooser = DraftChooser(runner, req_ids, self.generators)
        hidden_size = self.head.fc.out_features
        dev = self.cache.device
        last_h: list[torch.Tensor | None] = [None] * n

        for pieces in catch_up_pieces(done, end, self.budget):
            idx = np.fromiter((p.index for p in pieces), dtype=np.int64, count=len(pieces))
            starts = np.fromiter((p.start for p in pieces), dtype=np.int64, count=len(pieces))
            lens = np.fromiter((p.length for p in pieces), dtype=np.int64, count=len(pieces))
            positions = (np.arange(int(lens.sum())) - np.repeat(np.cumsum(lens) - lens, lens)
                         + np.repeat(starts, lens))
            ids = table.token_ids[np.repeat(slots[idx], lens), positions + 1]
            feats = []
            for i, s, m in zip(idx.tolist(), starts.tolist(), lens.tolist()):
                stored = self.features.get(req_ids[i])
                rows = stored.take(s, s + m) if stored is not None else None
                feats.append(rows if rows is not None
                             else torch.zeros(m, hidden_size, device=dev))
            features = torch.cat(feats)

            def run(input_ids, pos, kv_caches, md, plan, features=features):
                return self.head(input_ids, features, pos, kv_caches[0], md)

            hidden, plan = self.cache.forward(run, table, slots[idx], starts, lens, ids)
            rows = plan.query_start_loc[1:] - 1
            for j, i in enumerate(idx.tolist()):
                if starts[j] + lens[j] == end[i]:
                    last_h[i] = hidden[int(rows[j])]
        for i, r in enumerate(req_ids):
            self.computed[r] = int(end[i])
            stored = self.features.get(r)
            if stored is not None:                        # keep from the next needed position
                cut = max(0, min(int(end[i]) - stored.start, stored.rows.shape[0]))
                self.features[r] = _Features(stored.start + cut, stored.rows[cut:])
        h = torch.stack(last_h)
        tokens = chooser.choose(self.compute_logits(h).float(), np.arange(n))

        want = np.fromiter((counts[r] for r in req_ids), dtype=np.int64, count=n)
        columns = [tokens]
        for j in range(1, int(want.max())):
            active = np.flatnonzero(want > j)
            act = torch.from_numpy(active).to(dev)
            prev_h = h[act]

            def step(input_ids, pos, kv_caches, md, plan, prev_h=prev_h):
                return self.head(input_ids, prev_h, pos, kv_caches[0], md)

            out, _ = self.cache.forward(step, table, slots[active], end[active] + j - 1,
                                        np.ones(len(active), dtype=np.int64),
                                        columns[-1][act.to(columns[-1].device)])
            h = torch.zeros_like(h)
            h[act] = out
            drafted = chooser.choose(self.compute_logits(out).float(), active)
            full = torch.full_like(tokens, -1)
            full[act.to(full.device)] = drafted
            columns.append(full)
        ids = torch.stack(columns, dim=1).cpu().numpy()
        drafts = {r: ids[i, :counts[r]].tolist() for i, r in enumerate(req_ids)}
        return drafts, chooser.probs_by_request(counts)


def _eagle_name(name: str) -> str:
    """A checkpoint tensor name without the ``model.`` prefix some EAGLE exports carry."""
    return name[len("model."):] if name.startswith("model.") else name
