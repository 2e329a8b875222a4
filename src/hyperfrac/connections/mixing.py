"""The coefficients Hyper- and Frac-Connections share: static ``[P | Q]``, ``beta`` and an
optional dynamic part computed per slot from the normalised state.

HC (n streams, R = 1) and FC (m fractions, R = S = m) are the same matrix
``[[0, beta], [P, Q]]`` with a different input block (HC Eq. 1, FC Eq. 6); their dynamic parts
are the same equations on a slot of width Ds (HC Eq. 8-13, FC Eq. 9-14):

    t = act(norm(h) W),   [P | Q] = static_alpha + s_alpha t[..., :R+S],
    beta = static_beta + s_beta t[..., -1]      (:func:`functional.mixing_coefficients`)

Axes: N tokens, S slots (streams/fractions), R branch-input slots, Ds slot width.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator

import torch
from torch import Tensor, nn

from hyperfrac.connections import functional as kernels
from hyperfrac.connections.base import StreamConnection, StreamState

FREEZABLE = ("width", "depth")
"""Parts ``freeze`` may keep at their init (HC Table 3)."""
NORM_TYPES = ("layernorm", "rmsnorm")
"""Norms of the dynamic projection."""


class DynamicMixing(StreamConnection):
    """HC/FC coefficients: static ``[P | Q]``, ``beta`` plus an optional dynamic part.

    Parameters (names follow the papers):
      static_alpha (S, R+S)  = [A_m | A_r] (HC) or [Y | A] (FC); no weight decay
      static_beta  (S,)      = B; no weight decay
      dynamic_alpha (Ds, R+S), dynamic_beta (Ds,): W_m|W_r (or W_gamma|W_alpha) and W_beta, zero
      alpha_scale, beta_scale: s_alpha (shared by the input and residual mixing), s_beta = 0.01
      norm_weight (Ds,): only with ``norm_affine`` (folded into the projection)
    """

    def __init__(
        self,
        dim: int,
        *,
        n_slots: int,
        slot_dim: int,
        n_inputs: int,
        layer_idx: int = 0,
        dynamic: bool = True,
        tanh: bool = True,
        norm: bool = True,
        norm_type: str = "layernorm",
        norm_affine: bool = False,
        rescale: bool = True,
        scale_init: float = 0.01,
        freeze: Iterable[str] = (),
        recompute: bool = False,
        channel_first: bool = False,
        eps: float = 1e-5,
    ) -> None:
        super().__init__(dim, layer_idx=layer_idx, channel_first=channel_first)
        self.recompute = bool(recompute)
        freeze = tuple(freeze) if not isinstance(freeze, str) else (freeze,)
        self.n_slots, self.slot_dim, self.n_inputs = n_slots, slot_dim, n_inputs
        self.dynamic = bool(dynamic)
        self.eps = float(eps)
        s, r = n_slots, n_inputs
        self.static_alpha = nn.Parameter(torch.cat([self._init_input(), torch.eye(s)], dim=1))
        self.static_beta = nn.Parameter(torch.ones(s))
        if self.dynamic:
            self.dynamic_alpha = nn.Parameter(torch.zeros(slot_dim, r + s))
            self.dynamic_beta = nn.Parameter(torch.zeros(slot_dim))
            if rescale:  # shape (1,), not (): FSDP2 cannot shard 0-d parameters
                self.alpha_scale = nn.Parameter(torch.full((1,), float(scale_init)))
                self.beta_scale = nn.Parameter(torch.full((1,), float(scale_init)))
            else:  # FC §5.1 ablation "w/o rescale": the dynamic part enters unscaled
                self.register_buffer("alpha_scale", torch.ones(1), persistent=False)
                self.register_buffer("beta_scale", torch.ones(1), persistent=False)
            self.norm_weight = nn.Parameter(torch.ones(slot_dim)) if norm and norm_affine else None
            self.norm_mode = norm_type if norm else "none"  # layernorm | rmsnorm | none
            self.tanh = bool(tanh)
        self.frozen = freeze
        for part in freeze:
            for p in self._part_parameters(part):
                p.requires_grad_(False)

    def _init_input(self) -> Tensor:
        """Static input block P at init, shape (S, R)."""
        raise NotImplementedError

    @torch.no_grad()
    def reset_buffers(self) -> None:
        """Refill the unit scales of ``rescale=False`` (non-persistent buffers, uninitialised
        in a model materialised from the meta device, e.g. by ``from_pretrained``)."""
        for name in ("alpha_scale", "beta_scale"):
            if name in self._buffers:
                buf = self._buffers[name]
                self._buffers[name] = torch.ones(1, device="cpu" if buf.is_meta else buf.device)

    def _part_parameters(self, part: str) -> list[nn.Parameter]:
        """HC Table 3: 'width' = A_m and A_r (static + dynamic), 'depth' = B."""
        if part == "width":
            names = ("static_alpha", "dynamic_alpha", "alpha_scale")
        else:
            names = ("static_beta", "dynamic_beta", "beta_scale")
        return [p for n in names if isinstance(p := getattr(self, n, None), nn.Parameter)]

    # ------------------------------------------------------------ coefficients
    def coefficients(self, hb: Tensor | None) -> tuple[Tensor, Tensor, Tensor]:
        r = self.n_inputs
        alpha, beta = self.static_alpha, self.static_beta
        if self.dynamic and hb is not None:
            logits = kernels.norm_project(hb, self._projection(), self.norm_mode, self.eps)
            alpha, beta = kernels.mixing_coefficients(  # (N, S, R+S), (N, S): HC Eq. 11-13
                kernels.activation(logits, self.tanh), alpha, beta, self.alpha_scale,
                self.beta_scale,
            )
        return alpha[..., :r], alpha[..., r:], beta

    def width_connection(self, h: Tensor):
        if not self.dynamic:
            return super().width_connection(h)
        hb, lead = self._flatten(h)  # (N, S, Ds)
        xb, p, q, beta = kernels.dynamic_width(  # the fused form of coefficients() + P^T h
            hb, self._projection(), self.static_alpha, self.static_beta, self.alpha_scale,
            self.beta_scale, norm=self.norm_mode, eps=self.eps, tanh=self.tanh,
        )
        return self._to_model(xb, lead), StreamState(hb, p, q, beta, lead)

    def _projection(self) -> Tensor:
        """[W_alpha | W_beta] (Ds, R+S+1), with the norm weight folded in: norm(h) g @ W."""
        w = torch.cat([self.dynamic_alpha, self.dynamic_beta.unsqueeze(1)], dim=1)
        return w if self.norm_weight is None else w * self.norm_weight.unsqueeze(1)

    def decay_parameters(self) -> Iterator[nn.Parameter]:
        if self.dynamic:
            yield self.dynamic_alpha
            yield self.dynamic_beta

    def _coefficient_flops(self) -> int:
        if not self.dynamic:
            return 0
        s, ds, k = self.n_slots, self.slot_dim, self.n_inputs + self.n_slots + 1
        return s * (2 * ds * k + 3 * ds + 4 * k)  # norm stats, projection, tanh*scale+add
