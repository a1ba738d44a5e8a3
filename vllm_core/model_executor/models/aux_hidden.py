"""``AuxHiddenCapture``: the residual stream at chosen decoder layers, kept from the last
forward (what an EAGLE-3 head reads from its target).

A decoder whose ``aux_capture`` is set (``DecoderModel``; None by default, costing nothing)
calls ``reset()`` at the start of every forward and ``add(layer, stream)`` just before each
layer of ``layer_ids`` runs, with that layer's *input* residual stream (``hidden + residual``;
the embedding for layer 0), i.e. HF's ``output_hidden_states[layer]``. ``take()`` returns the
states of the last forward concatenated along the feature axis in the order of ``layer_ids``
([T, len(layer_ids) * hidden]) and clears them, so a forward whose states nobody takes (a
profile run, a graph capture) holds them only until the next forward.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch


@dataclass(slots=True, eq=False)
class AuxHiddenCapture:
    """Collects the input residual stream of the decoder layers ``layer_ids`` (global indices,
    in the order the consumer wants them concatenated; a layer may be listed twice, as the
    default EAGLE-3 layers of a shallow target are)."""

    layer_ids: tuple[int, ...]
    states: dict[int, torch.Tensor] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if not self.layer_ids or any(not isinstance(i, int) or i < 0
                                     for i in self.layer_ids):
            raise ValueError(f"auxiliary hidden-state layer ids must be integers >= 0, got "
                             f"{list(self.layer_ids)}")

    def reset(self) -> None:
        self.states.clear()

    def wants(self, layer: int) -> bool:
        return layer in self.layer_ids

    def add(self, layer: int, hidden: torch.Tensor, residual: torch.Tensor | None) -> None:
        """Record layer ``layer``'s input stream (a copy: layers may update their inputs in
        place)."""
        self.states[layer] = hidden.clone() if residual is None else hidden + residual

    def take(self) -> torch.Tensor | None:
        """[T, len(layer_ids) * H] from the last forward (None when it recorded none)."""
        if len(self.states) != len(set(self.layer_ids)):
            self.states.clear()
            return None
        out = torch.cat([self.states[i] for i in self.layer_ids], dim=-1)
        self.states.clear()
        return out
