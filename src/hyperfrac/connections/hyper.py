"""Hyper-Connections (Zhu et al., arXiv 2409.19606): static (SHC) and dynamic (DHC).

The hidden state is widened into n streams, H (n, D). Per layer the matrix
``[[0, B], [A_m, A_r]]`` (HC Eq. 1) mixes the streams into the layer input (A_m), mixes the
streams among themselves (A_r) and writes the layer output back (B):

    h0 = A_m^T H,   H' = A_r^T H,   H_new = B^T T(h0) + H'                (HC Eq. 2-7)

Dynamic HC adds an input-dependent part computed per stream from the normalised stream
(HC Eq. 8-13): B(H) = s_beta * tanh(norm(H) W_beta)^T + B,
A_m(H) = s_alpha * tanh(norm(H) W_m) + A_m, A_r(H) = s_alpha * tanh(norm(H) W_r) + A_r.

Initialisation equals Pre-Norm (HC Eq. 14): W = 0, B = 1, A_m = e_(layer_idx mod n), A_r = I,
s_alpha = s_beta = 0.01.

:class:`DynamicMixing` holds the parameters shared with Frac-Connections (FC is the same
matrix with a square input block; see :mod:`hyperfrac.connections.frac`).
Axes: N tokens, S slots (streams/fractions), R branch-input slots, Ds slot width.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Iterator

import torch
from torch import Tensor, nn

from hyperfrac.connections import functional as HF
from hyperfrac.connections.base import StreamConnection, StreamState

FREEZABLE = ("width", "depth")
NORM_TYPES = ("layernorm", "rmsnorm")


def _identity(t: Tensor) -> Tensor:
    return t


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
            self._norm_mode = norm_type if norm else "none"
            self._act = torch.tanh if tanh else _identity
        self.frozen = freeze
        for part in freeze:
            for p in self._part_parameters(part):
                p.requires_grad_(False)

    def _init_input(self) -> Tensor:
        """Static input block P at init, shape (S, R)."""
        raise NotImplementedError

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
            logits = self._act(HF.norm_project(hb, self._projection(), self._norm_mode, self.eps))
            alpha = alpha + self.alpha_scale * logits[..., :-1]  # (N, S, R+S)  HC Eq. 12-13
            beta = beta + self.beta_scale * logits[..., -1]  # (N, S)           HC Eq. 11
        return alpha[..., :r], alpha[..., r:], beta

    def width_connection(self, h: Tensor):
        if not self.dynamic:
            return super().width_connection(h)
        hb, lead = self._flatten(h)  # (N, S, Ds)
        xb, p, q, beta = HF.dynamic_width(
            hb, self._projection(), self.static_alpha, self.static_beta, self.alpha_scale,
            self.beta_scale, norm=self._norm_mode, eps=self.eps, tanh=self._act is torch.tanh,
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


class HyperConnection(DynamicMixing):
    """HC with ``n_streams`` copies of the hidden state; ``dynamic`` selects DHC (default)."""

    kind = "dhc"

    def __init__(self, dim: int, *, n_streams: int = 4, layer_idx: int = 0, **options) -> None:
        self._layer_stream = layer_idx % n_streams
        super().__init__(
            dim, n_slots=n_streams, slot_dim=dim, n_inputs=1, layer_idx=layer_idx, **options
        )
        self.kind = "dhc" if self.dynamic else "hc"

    @property
    def n_streams(self) -> int:
        return self.n_slots

    @property
    def output_scale(self) -> float:
        return math.sqrt(self.n_slots)

    def _init_input(self) -> Tensor:
        a_m = torch.zeros(self.n_slots, 1)
        a_m[self._layer_stream, 0] = 1.0  # HC Eq. 14: A_m = e_(k mod n)
        return a_m

    def expand(self, x: Tensor) -> Tensor:
        """Copy the hidden state into n identical streams (HC §2.1)."""
        self._check_input(x, "input")
        n = self.n_slots
        # materialised (not a stride-0 view): the kernels' bmm falls off its fast path otherwise
        if self.channel_first:
            return x.unsqueeze(1).expand(x.shape[0], n, *x.shape[1:]).contiguous()  # (B,n,C,*sp)
        return x.unsqueeze(-2).expand(*x.shape[:-1], n, x.shape[-1]).contiguous()  # (..., n, D)

    def reduce(self, h: Tensor) -> Tensor:
        """Sum the streams (HC Alg. 1)."""
        self._check_state(h)
        return h.sum(dim=1 if self.channel_first else -2)

    def extra_repr(self) -> str:
        return f"{super().extra_repr()}, n_streams={self.n_slots}, frozen={self.frozen}"
