"""An example third-party effzoo plugin.

It adds a feed-forward component ``relu2`` (squared ReLU, So et al. 2021, "Primer") and a variant
``gqa_relu2`` = the Qwen2.5 GQA baseline with that FFN. Installed with pip, it is found through the
``effzoo`` entry-point group and registered through the same hook as effzoo's built-ins.
"""
from __future__ import annotations

import torch.nn.functional as F
from torch import Tensor, nn

from effzoo import plugin


class SquaredReLU(plugin.FeedForward):
    """down(relu(up(x))²)."""

    residual_projections = ("down_proj",)  # initialised with std / sqrt(2 * n_layers)

    def __init__(self, d_model: int, hidden: int) -> None:
        super().__init__()
        self.up_proj = nn.Linear(d_model, hidden, bias=False)
        self.down_proj = nn.Linear(hidden, d_model, bias=False)

    def forward(self, x: Tensor, ctx: plugin.MixContext | None = None) -> Tensor:
        return self.down_proj(F.relu(self.up_proj(x)).square())


def relu2(cfg: plugin.ModelConfig, layer: int = 0) -> SquaredReLU:
    scale = cfg.opt("relu2_expansion")
    hidden = int(cfg.d_model * scale) if scale else cfg.ffn_hidden
    return SquaredReLU(cfg.d_model, hidden)


@plugin.hookimpl
def effzoo_register(register: plugin.Registrar) -> None:
    register.add_ffn("relu2", relu2, options={"relu2_expansion": plugin.Option(None, float, low=0, low_open=True)},
                     description="Squared-ReLU feed-forward (Primer); hidden = d_model × relu2_expansion")
    register.add_variant("gqa_relu2", base="gqa", group="attention", defaults={"ffn": "relu2"},
                         description="Qwen2.5 GQA with a squared-ReLU FFN (example plugin)")
