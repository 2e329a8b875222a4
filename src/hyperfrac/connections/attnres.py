"""Attention Residuals (AttnRes, Kimi Team, arXiv 2603.15031): attend over earlier outputs.

Instead of summing every earlier output into one residual stream, sublayer l reads a softmax-
weighted combination of its *sources*: the embedding v_0 and the outputs v_1..v_l of the
sublayers before it (layer_idx counts sublayers: attention and FFN separately):

    alpha_{i->l} = softmax_i( w_l^T RMSNorm(v_i) )         w_l in R^D, one pseudo-query per sublayer
    x_l          = sum_i alpha_{i->l} v_i                   branch input
    v_{l+1}      = branch(x_l)                              appended to the sources

**Block AttnRes** (``block_size=k``): the outputs inside a block of k consecutive sublayers are
summed; the sources of sublayer l are the embedding, the completed block sums and the current
block's partial sum (absent at a block's first sublayer), i.e. 1 + ceil(l / k) of them.
``block_size=1`` is full AttnRes exactly; ``block_size`` counts *sublayers* (Kimi's
pseudo-code: "block_size counts ATTN + MLP"), so an even k keeps blocks aligned to layers.

**The state carries the sources** along a slot axis, so the interface is unchanged:
``expand(x)`` -> (..., 1, D) holding the embedding; each call reads, runs the branch and either
appends its output as a new slot (full mode; a block's first sublayer) or adds it to the last
slot (the partial sum); ``reduce(h)`` is the final read before the head, with its own
pseudo-query. **Who owns the final read:** the ``layer_idx == 0`` connection (``final_query``,
``final_norm_weight``) — the one whose ``expand``/``reduce`` the models call
(``TransformerLM.streams`` and the ViT use ``blocks[0].attn_conn``); ``reduce`` on any other
connection is refused with that hint.

**State memory per token** (D floats each): full AttnRes holds 1 + L sources after L sublayers,
O(L*D); Block AttnRes 1 + ceil(L/k) = O(N*D) for N blocks. Autograd additionally saves each
sublayer's input state (the sources it attended over), so the saved activations of the mixing
grow as O(L^2*D) in full mode and O(L*N*D) in block mode (measured in the tests).

**Initialisation.** w_l = 0 (Kimi: "all pseudo-query vectors must be initialized to zero"), so
every sublayer starts with *uniform* weights 1/S over its S sources: the mixing is a *mean*, not
Pre-Norm's sum. The state and the branch inputs are therefore not Pre-Norm's: sublayer l's
input is h_l / S_l, where h_l = v_0 + v_1 + ... is Pre-Norm's residual stream (block sums add
up to the same total). The *network function* nevertheless equals the Pre-Norm network's at
init up to the norms' epsilon, because every branch (the block's pre-norm) and the head (the
final norm after ``reduce``) start with a scale-invariant norm: RMSNorm(h / S, eps) =
RMSNorm(h, S^2 eps), likewise LayerNorm; by induction every branch output is Pre-Norm's. The
tests hold both facts: uniform weights and inputs = sum / S, and a float64 stack equal to
Pre-Norm after the final norm when the norms' eps is 0. The RMSNorm of the keys has a
learnable weight (``norm_affine``, ones at init, as ``nn.RMSNorm`` in Kimi's released code);
it is redundant in the function class (w^T (g * n) = (w * g)^T n) but part of the published
parameterisation. The layer_idx=0 sublayer has one source, so its weight is always 1 and its
pseudo-query never gets a gradient (kept for a uniform per-sublayer layout, as Kimi's code).

**Connection matrix.** The weights are exactly the unfolded connection matrix: with
``n_sublayers=L`` set, :meth:`connection_matrix` writes sublayer l in HC's paper layout over a
fixed S = 1 + ceil(L/k) slots (slot 0 the embedding, slot b block b's sum): P = alpha padded with
zeros, Q = diag(slot filled), beta = the one-hot slot the output is added to. Then
:func:`~hyperfrac.connections.unfolded_connection_matrix` returns c_{l,j} = alpha of the slot
holding output j, and the Amax gains are 1.

Parameters are not weight-decayed (:meth:`decay_parameters` is empty): w_l and the norm weight
are static per-layer routing vectors like HC's static alpha/beta, not projections of the data;
decay would pull every sublayer back towards uniform averaging.

Axis legend: N tokens (leading dims), S sources (slots), D width, L sublayers, k block size.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, NamedTuple

import torch
from torch import Tensor, nn

from hyperfrac.connections.base import Connection, _check_index
from hyperfrac.connections.options import ConnectionSpecError, Option


@dataclass(frozen=True)
class BlockSize(Option):
    """``block_size``: None or 0 (full AttnRes) or an integer >= 1; normalised to None or k."""

    def check(self, kind: str, name: str, value: Any) -> int | None:
        if value is None or (isinstance(value, int) and not isinstance(value, bool) and value == 0):
            return None
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise ConnectionSpecError(
                f"{kind}: {name} must be an integer >= 1 (sublayers per block), or 0 / null for "
                f"full AttnRes, got {value!r} ({type(value).__name__})"
            )
        return value


def attend(v: Tensor, query: Tensor, weight: Tensor | None, eps: float) -> tuple[Tensor, Tensor]:
    """softmax_i(w^T RMSNorm(v_i)) over the sources v (..., S, D): (sum_i alpha_i v_i, alpha).

    The norm is folded into the logits, w^T (g * v_i) / rms(v_i), so no normalised copy of the
    sources is materialised or saved; logits and softmax in float32 (float64 for float64 v).
    """
    cdt = torch.promote_types(v.dtype, torch.float32)
    q = query if weight is None else query * weight  # (D,)
    dots = torch.matmul(v, q.to(v.dtype)).to(cdt)  # (..., S)
    ms = v.square().sum(-1, dtype=cdt) / v.shape[-1]  # (..., S) mean square
    alpha = torch.softmax(dots * torch.rsqrt(ms + eps), dim=-1)  # (..., S)
    x = torch.matmul(alpha.to(v.dtype).unsqueeze(-2), v).squeeze(-2)  # (..., D)
    return x, alpha


class AttnResState(NamedTuple):
    """What the width connection hands to the depth connection."""

    h: Tensor  # (..., S, D) the sources, channel-last


class AttentionResidual(Connection):
    """AttnRes for sublayer ``layer_idx`` (full, or Block AttnRes with ``block_size``).

    Parameters: ``pseudo_query`` (D,) zeros, ``norm_weight`` (D,) ones (``norm_affine``); the
    ``layer_idx == 0`` connection also owns the final read, ``final_query`` and
    ``final_norm_weight``. See the module docstring for the equations and the state layout.
    """

    equals_prenorm_at_init = False  # a mean, not a sum: Pre-Norm only up to the norms' eps
    kind = "attnres"
    dynamic = True  # the weights depend on the sources
    #: slots of the state ``expand`` returns; sublayer l's state has :attr:`n_sources` slots
    n_slots = 1

    def __init__(
        self,
        dim: int,
        *,
        layer_idx: int = 0,
        channel_first: bool = False,
        block_size: int | None = None,
        n_sublayers: int | None = None,
        eps: float = 1e-6,
        norm_affine: bool = True,
    ) -> None:
        super().__init__(dim, layer_idx=layer_idx, channel_first=channel_first)
        block_size = BlockSize("").check(self.kind, "block_size", block_size)
        if n_sublayers is not None:
            _check_index("n_sublayers", n_sublayers, 1)
            if self.layer_idx >= n_sublayers:
                raise ValueError(
                    f"{self.kind}: layer_idx={self.layer_idx} but n_sublayers={n_sublayers}; "
                    "layer_idx counts sublayers (attention and FFN separately: 2*i, 2*i + 1), "
                    "n_sublayers is their total (2 * n_layers)"
                )
        self.block_size = block_size
        self.n_sublayers = n_sublayers
        self.eps = float(eps)
        self.pseudo_query = nn.Parameter(torch.zeros(dim))
        self.norm_weight = nn.Parameter(torch.ones(dim)) if norm_affine else None
        if self.layer_idx == 0:
            self.final_query = nn.Parameter(torch.zeros(dim))
            self.final_norm_weight = nn.Parameter(torch.ones(dim)) if norm_affine else None
        else:
            self.final_query = self.final_norm_weight = None

    @torch.no_grad()
    def reset_parameters(self) -> None:
        for q in (self.pseudo_query, self.final_query):
            if q is not None:
                q.zero_()
        for g in (self.norm_weight, self.final_norm_weight):
            if g is not None:
                g.fill_(1.0)

    @property
    def ends_use_parameters(self) -> bool:
        return self.final_query is not None  # reduce() is the final read

    # ------------------------------------------------------------------ layout
    @property
    def _k(self) -> int:
        return self.block_size or 1

    def sources_at(self, layer_idx: int) -> int:
        """S, sources sublayer ``layer_idx`` reads: the embedding + ceil(layer_idx / k)."""
        return 1 + -(-layer_idx // self._k)

    @property
    def n_sources(self) -> int:
        """S of this sublayer's input state."""
        return self.sources_at(self.layer_idx)

    @property
    def total_slots(self) -> int | None:
        """Slots after all ``n_sublayers`` (what ``reduce`` reads), or None if L is unknown."""
        return None if self.n_sublayers is None else self.sources_at(self.n_sublayers)

    def _to_last(self, h: Tensor) -> Tensor:
        """(B, S, C, *sp) -> (B, *sp, S, C) for channel-first states; else unchanged."""
        return h.movedim(1, -1).movedim(1, -1) if self.channel_first else h

    def _from_last(self, h: Tensor) -> Tensor:
        return h.movedim(-2, 1).movedim(-1, 2) if self.channel_first else h

    def _check_state(self, h: Tensor, want: int | None) -> None:
        self._check_input(h, "stream state")
        axes = (1, 2) if self.channel_first else (-2, -1)
        ok = h.dim() >= (3 if self.channel_first else 2) and h.shape[axes[1]] == self.dim
        if ok and (want is None or h.shape[axes[0]] == want):
            return
        got = tuple(h.shape)
        if not ok:
            layout = "(B, S, C, *spatial)" if self.channel_first else "(..., S, D)"
            raise ValueError(
                f"{self.kind}: stream state has shape {got}, expected {layout} with "
                f"D={self.dim}; did you call expand() on the input first?"
            )
        raise ValueError(
            f"{self.kind}: layer_idx={self.layer_idx} expects a state of {want} sources (the "
            f"embedding and {want - 1} output sums, block_size={self.block_size}), got "
            f"{h.shape[axes[0]]} (shape {got}); call the connections once each in layer_idx "
            "order after expand(), with layer_idx counting sublayers"
        )

    # ----------------------------------------------------------------- interface
    def expand(self, x: Tensor) -> Tensor:
        self._check_input(x, "input")
        return x.unsqueeze(1 if self.channel_first else -2)  # (..., 1, D) | (B, 1, C, *sp)

    def width_connection(self, h: Tensor) -> tuple[Tensor, AttnResState]:
        self._check_state(h, self.n_sources)
        v = self._to_last(h)  # (..., S, D)
        x, _ = attend(v, self.pseudo_query, self.norm_weight, self.eps)  # (..., D)
        return (x.movedim(-1, 1) if self.channel_first else x), AttnResState(v)

    def depth_connection(self, out: Tensor, state: AttnResState) -> Tensor:
        v = state.h  # (..., S, D)
        lead = tuple(v.shape[:-2])
        want = (lead[0], self.dim, *lead[1:]) if self.channel_first else (*lead, self.dim)
        self._check_branch_output(out, want)
        o = (out.movedim(1, -1) if self.channel_first else out).unsqueeze(-2)  # (..., 1, D)
        if self.layer_idx % self._k == 0:  # full mode, or a block's first sublayer: new slot
            new = torch.cat([v, o.to(v.dtype)], dim=-2)  # (..., S+1, D)
        else:  # add to the current block's partial sum
            new = torch.cat([v[..., :-1, :], v[..., -1:, :] + o], dim=-2)  # (..., S, D)
        return self._from_last(new)

    def reduce(self, h: Tensor) -> Tensor:
        """The final read before the head: softmax(w_out^T RMSNorm(v_i)) over all sources."""
        if self.final_query is None:
            raise RuntimeError(
                f"{self.kind}: reduce() is the final read, owned by the layer_idx=0 connection; "
                f"this one has layer_idx={self.layer_idx} (call reduce on the connection whose "
                "expand() made the state)"
            )
        self._check_state(h, self.total_slots)
        y, _ = attend(self._to_last(h), self.final_query, self.final_norm_weight, self.eps)
        return y.movedim(-1, 1) if self.channel_first else y

    def collapse(self, h: Tensor) -> Tensor:
        """The sum of the sources so far: Pre-Norm's residual stream at that depth (the final
        read needs all L sublayers' slots, so it cannot collapse an intermediate state)."""
        self._check_state(h, None)
        y = self._to_last(h).sum(dim=-2)  # (..., S, D) -> (..., D)
        return y.movedim(-1, 1) if self.channel_first else y

    # ------------------------------------------------------------- introspection
    def attention_weights(self, h: Tensor, *, final: bool = False) -> Tensor:
        """alpha (..., S) this sublayer (or, ``final=True``, the final read) puts on each
        source of state ``h``; sums to 1 over S."""
        if final:
            if self.final_query is None:
                raise RuntimeError(
                    f"{self.kind}: only the layer_idx=0 connection has the final read"
                )
            self._check_state(h, self.total_slots)
            q, g = self.final_query, self.final_norm_weight
        else:
            self._check_state(h, self.n_sources)
            q, g = self.pseudo_query, self.norm_weight
        return attend(self._to_last(h), q, g, self.eps)[1]

    def reduce_weights(self, h: Tensor) -> Tensor:
        """The final read as a (..., R=1, S) matrix over the sources (layer_idx=0 only): what
        the analyses use for the final output's row instead of the streams' sum."""
        return self.attention_weights(h, final=True).unsqueeze(-2)

    def connection_matrix(self, h: Tensor | None = None) -> Tensor:
        """HC paper layout over the fixed 1 + ceil(L/k) slots, one per token:
        (..., S+1, 1+S) = [[0, beta], [alpha padded, diag(filled)]] (module docstring).
        Needs ``h`` (the weights depend on the sources) and ``n_sublayers`` (the slot count)."""
        if h is None:
            raise ValueError(
                f"{self.kind}: the weights depend on the sources; pass the stream state h "
                "(connection_matrix(h)); at init they are uniform over the sources"
            )
        if self.total_slots is None:
            raise ValueError(
                f"{self.kind}: connection_matrix needs the model's sublayer count for its fixed "
                "slot layout; build with n_sublayers=L (2 * n_layers), e.g. "
                "{kind: attnres, n_sublayers: 12}"
            )
        s_tot, s = self.total_slots, self.n_sources
        alpha = self.attention_weights(h)  # (..., S)
        lead = alpha.shape[:-1]
        p = torch.nn.functional.pad(alpha, (0, s_tot - s)).unsqueeze(-1)  # (..., S_tot, 1)
        filled = (torch.arange(s_tot, device=alpha.device) < s).to(alpha.dtype)
        q = torch.diag(filled).expand(*lead, s_tot, s_tot)  # (..., S_tot, S_tot)
        beta = torch.zeros(s_tot, dtype=alpha.dtype, device=alpha.device)
        beta[1 + self.layer_idx // self._k] = 1.0
        top = torch.cat([beta.new_zeros(1), beta]).expand(*lead, 1, s_tot + 1)
        return torch.cat([top, torch.cat([p, q], dim=-1)], dim=-2)  # (..., S_tot+1, 1+S_tot)

    # --------------------------------------------------------------- accounting
    @staticmethod
    def _read_flops(s: int, d: int) -> int:
        # w*g (D), dots (2SD), mean squares (2SD), rsqrt/scale/softmax (~5S), weighted sum (2SD)
        return d + 6 * s * d + 5 * s

    def flops_per_token(self) -> int:
        d = self.dim
        flops = self._read_flops(self.n_sources, d)
        flops += d if self.layer_idx % self._k else 0  # the partial-sum add
        if self.final_query is not None and self.total_slots is not None:
            flops += self._read_flops(self.total_slots, d)  # the final read (needs L)
        return flops

    def extra_repr(self) -> str:
        return (
            f"{super().extra_repr()}, block_size={self.block_size}, "
            f"n_sublayers={self.n_sublayers}, sources={self.n_sources}"
        )
