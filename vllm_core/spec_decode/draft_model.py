"""The draft-model proposer (``{"method": "draft_model", "model": PATH}``), worker side.

A smaller causal LM with the target's vocabulary proposes ``k`` tokens per verifying request
per step. Its paged KV cache shares the target's block tables (``DraftCache``; see
``worker_proposer`` for why rollbacks and prefix caching then need nothing more). Per step:

1. catch-up: one forward (split by the token budget when long) over each request's known
   tokens its cache does not hold yet: the whole prompt and first token the first time, then
   the drafts the target accepted plus the target's own token; its last row's logits give
   draft 1;
2. ``k - 1`` single-token forwards, each feeding the previous draft at the next position.

Greedy requests take the draft's argmax. Requests that sample at random draw each draft from
``q = softmax(draft_logits / temperature)`` (their own per-request draft generator when the
request is seeded, so a seeded request stays reproducible) and return ``q``: the rejection
sampler accepts draft ``d`` with probability ``min(1, p(d) / q(d))`` and resamples from
``max(p - q, 0)``, so the output keeps exactly the target's distribution.

``num_hidden_layers`` truncates the draft to its first layers. A draft whose checkpoint is
the target's own, in the target's dtype, is a view of the target (``TruncatedDecoder``: the
target's embedding, first layers, final norm and LM head; no second copy of the weights).
"""

from __future__ import annotations

import dataclasses
from typing import TYPE_CHECKING, Any

import numpy as np
import torch
from torch import nn

from vllm_core.config import ModelArchConfig, ModelConfig
from vllm_core.devices import HOST
from vllm_core.logger import init_logger
from vllm_core.sampling.metadata import make_generator
from vllm_core.sampling.sampler import sample_from_probs
from vllm_core.spec_decode.config import SpeculativeConfig
from vllm_core.spec_decode.draft_forward import catch_up_pieces, piece_arrays
from vllm_core.spec_decode.paged_proposer import PagedDraftProposer, draft_checkpoint
from vllm_core.worker.step_plan import StepPlan

if TYPE_CHECKING:  # pragma: no cover
    from vllm_core.worker.model_runner import ModelRunner

logger = init_logger(__name__)

# a seeded request's draft generator: seed XOR this, a stream apart from its target sampler's
_DRAFT_SEED_SALT = 0x5EED_D2AF7


class TruncatedDecoder(nn.Module):
    """The first ``num_layers`` decoder layers of a Llama-family target, sharing its modules
    (embedding, layers, final norm, LM head): a layer-skip draft with no weights of its own."""

    def __init__(self, target: nn.Module, num_layers: int) -> None:
        super().__init__()
        decoder = getattr(target, "model", None)
        if not all(hasattr(decoder, a) for a in ("embed_tokens", "layers", "norm")):
            raise ValueError(f"a truncated-layer draft of the target needs a Llama-family "
                             f"decoder (embed_tokens, layers, norm); {type(target).__name__} "
                             f"has none")
        if not 1 <= num_layers <= len(decoder.layers):
            raise ValueError(f"speculative_config.num_hidden_layers={num_layers} is not in "
                             f"1..{len(decoder.layers)} (the target's layers)")
        self.embed_tokens = decoder.embed_tokens
        self.layers = nn.ModuleList(decoder.layers[:num_layers])
        self.norm = decoder.norm
        self._logits = target.compute_logits

    def forward(self, input_ids: torch.Tensor, positions: torch.Tensor,
                kv_caches: list[torch.Tensor], attn_metadata: Any) -> torch.Tensor:
        hidden, residual = self.embed_tokens(input_ids), None
        for layer, kv_cache in zip(self.layers, kv_caches, strict=True):
            hidden, residual = layer(positions, hidden, residual, kv_cache, attn_metadata)
        hidden, _ = self.norm(hidden, residual)
        return hidden

    def compute_logits(self, hidden: torch.Tensor) -> torch.Tensor:
        return self._logits(hidden)


def check_draft_vocab(target: ModelArchConfig, draft: ModelArchConfig, path: str) -> None:
    """The draft must score the target's token ids: same vocabulary size (ValueError)."""
    if draft.vocab_size != target.vocab_size:
        raise ValueError(f"draft model {path} has a vocabulary of {draft.vocab_size} tokens, "
                         f"the target {target.vocab_size}: speculative decoding needs a draft "
                         f"with the target's tokenizer")


class DraftModelProposer(PagedDraftProposer):
    """See the module docstring. ``model``: the draft (``forward(ids, positions, kv_caches,
    attn_metadata)`` and ``compute_logits``); ``arch``: its architecture."""

    def __init__(self, runner: ModelRunner, model: nn.Module, arch: ModelArchConfig,
                 dtype: torch.dtype) -> None:
        super().__init__(runner, arch.num_hidden_layers, arch.num_key_value_heads,
                         arch.head_dim, dtype)
        self.model = model
        self.arch = arch

    @classmethod
    def load(cls, runner: ModelRunner, spec: SpeculativeConfig) -> DraftModelProposer:
        from vllm_core.model_executor.loader import get_model, load_arch_config

        path = draft_checkpoint(runner, spec)
        target = runner.config.model
        dtype_name = spec.dtype or target.dtype
        dtype = getattr(torch, dtype_name)
        if path == target.model and dtype == runner.dtype:
            layers = spec.num_hidden_layers or runner.arch.num_hidden_layers
            model = TruncatedDecoder(runner.model, layers)
            arch = dataclasses.replace(runner.arch, num_hidden_layers=layers)
            logger.info("draft model: the target's first %d layers (shared weights)", layers)
            return cls(runner, model, arch, dtype)
        arch = load_arch_config(path)
        check_draft_vocab(runner.arch, arch, path)
        if spec.num_hidden_layers is not None:
            if spec.num_hidden_layers > arch.num_hidden_layers:
                raise ValueError(f"speculative_config.num_hidden_layers="
                                 f"{spec.num_hidden_layers} exceeds the draft's "
                                 f"{arch.num_hidden_layers} layers")
            arch = dataclasses.replace(arch, num_hidden_layers=spec.num_hidden_layers)
        config = ModelConfig(model=path, dtype=dtype_name, max_model_len=target.max_model_len,
                             seed=target.seed, arch=arch,
                             load_format="dummy" if target.load_format == "dummy" else "auto")
        model = get_model(config, runner.attn_backend, runner.device, runner.ops)
        logger.info("draft model: %s (%d layers, %s)", path, arch.num_hidden_layers, dtype_name)
        return cls(runner, model, arch, dtype)

    # ------------------------------------------------------------------ proposing
    def _forward(self, ids: torch.Tensor, positions: torch.Tensor, kv_caches: list,
                 attn_metadata: Any, plan: StepPlan) -> torch.Tensor:
        return self.model(ids, positions, kv_caches, attn_metadata)

    def propose(self, runner: ModelRunner, counts: dict[str, int]
                ) -> tuple[dict[str, list[int]], dict[str, torch.Tensor]]:
        table = runner.table
        req_ids, slots, known, done = self.request_arrays(runner, counts)
        done = np.minimum(done, known - 1)
        chooser = DraftChooser(runner, req_ids, self.generators)

        # 1. catch-up over the known tokens the draft cache lacks; last rows give draft 1
        last_logits = [None] * len(req_ids)
        for pieces in catch_up_pieces(done, known, self.budget):
            idx, starts, lens, positions = piece_arrays(pieces)
            token_rows = np.repeat(slots[idx], lens)
            hidden, plan = self.cache.forward(self._forward, table, slots[idx], starts, lens,
                                              table.token_ids[token_rows, positions])
            finishing = np.flatnonzero(starts + lens == known[idx])
            if finishing.size:
                rows = torch.from_numpy(plan.query_start_loc[1:][finishing] - 1).to(
                    hidden.device)
                logits = self.model.compute_logits(hidden[rows]).float()
                for j, i in enumerate(idx[finishing].tolist()):
                    last_logits[i] = logits[j]
        for r, n in zip(req_ids, known.tolist()):
            self.computed[r] = n
        tokens = chooser.choose(torch.stack(last_logits), np.arange(len(req_ids)))

        # 2. k - 1 single-token steps, feeding each draft at the next position
        def step(j: int, active: np.ndarray, previous: torch.Tensor) -> torch.Tensor:
            hidden, _ = self.cache.forward(self._forward, table, slots[active],
                                           known[active] + j - 1,
                                           np.ones(len(active), dtype=np.int64), previous)
            return self.model.compute_logits(hidden)

        return self.draft_runs(counts, req_ids, tokens, chooser, step)


class DraftChooser:
    """Picks draft tokens from draft logits, per request: argmax (greedy) or a sample from
    ``softmax(logits / temperature)``, whose rows it keeps for the rejection sampler."""

    def __init__(self, runner: ModelRunner, req_ids: list[str],
                 generators: dict[str, torch.Generator]) -> None:
        self.req_ids = req_ids
        params = [runner.requests[r].sampling_params for r in req_ids]
        self.random = np.fromiter((not p.is_greedy for p in params), dtype=bool,
                                  count=len(req_ids))
        self.temperature = [float(p.temperature) for p in params]
        self.seeds = [p.seed for p in params]
        self.generators = generators
        self.on_host = runner.device == HOST
        self.rows: dict[int, list[torch.Tensor]] = {}

    def _generator(self, i: int, device: torch.device) -> torch.Generator | None:
        seed = self.seeds[i]
        if seed is None:
            return None
        req_id = self.req_ids[i]
        gen = self.generators.get(req_id)
        if gen is None:
            gen = self.generators[req_id] = make_generator(int(seed) ^ _DRAFT_SEED_SALT,
                                                           device)
        return gen

    def choose(self, logits: torch.Tensor, requests: np.ndarray) -> torch.Tensor:
        """int64 [len(requests)] drafts from ``logits`` [len(requests), V] (float32)."""
        tokens = logits.argmax(dim=-1)
        rand = np.flatnonzero(self.random[requests])
        if rand.size:
            temps = torch.tensor([self.temperature[i] for i in requests[rand].tolist()],
                                 dtype=torch.float32, device=logits.device)
            q = torch.softmax(logits[torch.from_numpy(rand).to(logits.device)]
                              / temps.unsqueeze(1), dim=-1)
            gens = {j: g for j, i in enumerate(requests[rand].tolist())
                    if (g := self._generator(i, logits.device)) is not None}
            sampled = sample_from_probs(q, gens, self.on_host)
            tokens[torch.from_numpy(rand).to(tokens.device)] = sampled.to(tokens.dtype)
            for j, i in enumerate(requests[rand].tolist()):
                self.rows.setdefault(i, []).append(q[j])
        return tokens

    def probs_by_request(self, counts: dict[str, int]) -> dict[str, torch.Tensor]:
        return {self.req_ids[i]: torch.stack(rows[:counts[self.req_ids[i]]])
                for i, rows in self.rows.items()}
