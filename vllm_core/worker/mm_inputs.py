"""The runner's multimodal step inputs: vision-encoder runs, the encoder cache, input
embeddings and M-RoPE positions (models whose class declares ``supports_images``).

Per step, after the runner staged and uploaded the plan (``ModelRunner._launch``):

1. ``update(so)`` (with the request deltas): forget finished requests, remember the
   ``MultiModalFeatures`` of new ones, drop the encoder outputs in ``so.free_encoder_hashes``;
2. ``stage_positions(plan, positions)`` (host staging, before upload): M-RoPE models get each
   token's text-equivalent position: prompt token ``p`` -> ``mrope_positions[0, p]``, generated
   token ``p`` -> ``p + mrope_delta``. This is exact for every token but image placeholders
   (whose three axes differ), so decode steps keep one position row and stay graph-capturable;
3. ``prepare(plan, so, inputs)``: encode ``so.scheduled_encoder_inputs`` (one batched encoder
   call) into the cache keyed by image hash; when the step computes image placeholder tokens,
   ``inputs.inputs_embeds`` = token embeddings with those rows replaced by the matching rows of
   the image's encoder output, and ``inputs.positions`` = the ``[3, T]`` M-RoPE positions.

Invariant (from the scheduler, ``engine/encoder_scheduler.py``): every image whose placeholders
a step computes has its output in the cache when ``prepare`` runs.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch

from vllm_core.messages import SchedulerOutput
from vllm_core.multimodal.inputs import MultiModalFeatures
from vllm_core.worker.step_plan import StepPlan


class MultiModalStepInputs:
    """See the module docstring. ``model`` implements the multimodal model contract
    (``embed_input_ids``, ``encode_images``, ``uses_mrope``)."""

    def __init__(self, model: Any, device: torch.device, dtype: torch.dtype,
                 embeds: bool = True) -> None:
        self.model = model
        self.device = device
        self.dtype = dtype
        self.embeds = embeds                 # False on a pipeline stage after the first
        self.uses_mrope = bool(getattr(model, "uses_mrope", False))
        self.features: dict[str, MultiModalFeatures] = {}
        self.cache: dict[str, torch.Tensor] = {}
        self.num_encoded = 0                 # images encoded so far (tests, stats)

    @classmethod
    def for_model(cls, model: Any, device: torch.device, dtype: torch.dtype,
                  first_stage: bool = True) -> MultiModalStepInputs | None:
        """None for a model without images; a later pipeline stage (no embeddings, no
        vision tower) only gets the M-RoPE positions."""
        if not getattr(model, "supports_images", False):
            return None
        return cls(model, device, dtype, embeds=first_stage)

    def update(self, so: SchedulerOutput) -> None:
        for req_id in so.finished_req_ids:
            self.features.pop(req_id, None)
        for new in so.scheduled_new_reqs:
            if new.mm_features is not None and new.mm_features.items:
                self.features[new.req_id] = new.mm_features
            else:
                self.features.pop(new.req_id, None)
        for h in so.free_encoder_hashes:
            self.cache.pop(h, None)

    def stage_positions(self, plan: StepPlan, positions: np.ndarray) -> None:
        """Rewrite the staged positions ``positions[:T]`` of requests with images (M-RoPE)."""
        if not self.uses_mrope or not self.features:
            return
        qsl = plan.query_start_loc
        for i, req_id in enumerate(plan.order):
            feats = self.features.get(req_id)
            if feats is None:
                continue
            rows = slice(int(qsl[i]), int(qsl[i + 1]))
            positions[rows] = self._text_positions(feats, plan.positions[rows])

    def computes_images(self, plan: StepPlan) -> bool:
        """Whether the step computes image placeholder tokens (it then needs input embeddings
        and ``[3, T]`` positions, so it cannot replay a decode graph)."""
        for i, req_id in enumerate(plan.order):
            feats = self.features.get(req_id)
            if feats is not None:
                start = int(plan.num_computed[i])
                if feats.overlapping(start, start + int(plan.num_scheduled[i])):
                    return True
        return False

    @staticmethod
    def _text_positions(feats: MultiModalFeatures, p: np.ndarray) -> np.ndarray:
        mrope = feats.mrope_positions
        prompt_len = mrope.shape[1]
        return np.where(p < prompt_len, mrope[0, np.minimum(p, prompt_len - 1)],
                        p + feats.mrope_delta)

    @torch.no_grad()
    def prepare(self, plan: StepPlan, so: SchedulerOutput, inputs: Any) -> None:
        if so.scheduled_encoder_inputs and self.embeds:
            self._encode(so)
        if not self.features:
            return
        qsl = plan.query_start_loc
        pieces: list[tuple[int, torch.Tensor]] = []      # (first token row, rows to put)
        mrope_rows: list[tuple[int, np.ndarray]] = []    # (first token row, positions [3, n])
        for i, req_id in enumerate(plan.order):
            feats = self.features.get(req_id)
            if feats is None:
                continue
            start = int(plan.num_computed[i])
            end = start + int(plan.num_scheduled[i])
            row0 = int(qsl[i])
            hit = feats.overlapping(start, end)
            for index in hit if self.embeds else ():
                item = feats.items[index]
                lo, hi = max(start, item.offset), min(end, item.end)
                out = self.cache.get(item.hash)
                if out is None:
                    raise RuntimeError(f"request {req_id!r}: the encoder output of image "
                                       f"{index} is not cached (scheduler invariant broken)")
                pieces.append((row0 + lo - start, out[lo - item.offset:hi - item.offset]))
            if hit and self.uses_mrope:
                prompt_len = feats.mrope_positions.shape[1]
                p = np.arange(start, end)
                pos = np.repeat((p + feats.mrope_delta)[None], 3, axis=0)
                inside = p < prompt_len
                pos[:, inside] = feats.mrope_positions[:, p[inside]]
                mrope_rows.append((row0, pos))
        if pieces:
            embeds = self.model.embed_input_ids(inputs.input_ids).clone()
            for row, rows in pieces:
                embeds[row:row + rows.shape[0]] = rows.to(embeds.dtype)
            inputs.inputs_embeds = embeds
        if mrope_rows:
            base = inputs.positions
            pos3 = base.unsqueeze(0).expand(3, -1).clone()
            for row, pos in mrope_rows:
                pos3[:, row:row + pos.shape[1]] = torch.from_numpy(pos).to(pos3.device)
            inputs.positions = pos3

    def _encode(self, so: SchedulerOutput) -> None:
        items = [it for it in so.scheduled_encoder_inputs if it.hash not in self.cache]
        if not items:
            return
        pixels = torch.from_numpy(np.concatenate([it.pixel_values for it in items]))
        pixels = pixels.to(self.device, self.dtype, non_blocking=True)
        outs = self.model.encode_images(pixels, [it.grid_thw for it in items])
        for it, out in zip(items, outs, strict=True):
            if out.shape[0] != it.length:
                raise RuntimeError(f"encoder output of image {it.hash} has {out.shape[0]} "
                                   f"rows, its placeholder run {it.length}")
            self.cache[it.hash] = out
        self.num_encoded += len(items)
