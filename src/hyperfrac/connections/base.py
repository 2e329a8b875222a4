"""The interface every connection kind implements, and the shared stream machinery.

A connection replaces ``h + f(norm(h))``. Every kind offers the same five operations, so a
model built with one kind differs from its baseline by one config key:

* ``expand(x)``: model width -> stream state (HC copies n times, FC splits into m fractions,
  residual is the identity);
* ``width_connection(h) -> (branch_input, state)`` and
  ``depth_connection(branch_output, state) -> h``: the two halves around the branch;
* ``forward(h, branch, *args, **kwargs)``: both halves with the branch in between;
* ``reduce(h)``: stream state -> model width (HC sums streams, FC joins fractions).

Layouts (D = model width, n streams, m fractions):
  sequence, channel-last:  x (..., D)          HC/mHC h (..., n, D)      FC h (..., m, D/m)
  channel-first maps:      x (B, C, *spatial)  HC/mHC h (B, n, C, *sp.)  FC h (B, m, C/m, *sp.)
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterator
from typing import Any, ClassVar, NamedTuple

import torch
from torch import Tensor, nn

from hyperfrac.connections import functional as kernels
from hyperfrac.connections.recompute import RecomputeInput


def _check_index(name: str, value: Any, minimum: int) -> None:
    """``value`` must be an integer (not a bool, not 16.7) >= ``minimum``."""
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        raise ValueError(
            f"{name} must be an integer >= {minimum}, got {value!r} ({type(value).__name__})"
        )


class Connection(nn.Module):
    """Abstract connection. Subclasses define the stream layout and the two halves."""

    kind: str = "abstract"
    #: False only for Post-Norm: a block must not put its own norm in front of the branch.
    uses_prenorm: bool = True
    #: False where the network at init equals Pre-Norm only approximately (AttnRes: its reads
    #: average the sources, equal only up to the norms' eps): ``hyperfrac convert`` refuses it.
    equals_prenorm_at_init: ClassVar[bool] = True
    #: The spec option that sets the slot count (``n_streams``, ``n_fracs``), or None.
    slot_option: ClassVar[str | None] = None
    #: S, slots of the stream state per token (1: the hidden state itself).
    n_slots: int = 1

    def __init__(self, dim: int, *, layer_idx: int = 0, channel_first: bool = False) -> None:
        super().__init__()
        _check_index("dim", dim, 1)
        _check_index("layer_idx", layer_idx, 0)
        self.dim = int(dim)
        self.layer_idx = int(layer_idx)
        self.channel_first = bool(channel_first)

    # ----------------------------------------------------------------- interface
    @property
    def output_scale(self) -> float:
        """Multiplier for the init std of a block's output projections (HC §4: sqrt(n))."""
        return 1.0

    def flops_per_token(self) -> int:
        """Forward FLOPs per token of this module (multiply-add = 2): here the residual add."""
        return self.dim

    def extra_params(self) -> int:
        """Parameters this module adds to the branches (the plain residual adds none)."""
        return sum(p.numel() for p in self.parameters())

    @property
    def ends_use_parameters(self) -> bool:
        """True when ``expand`` or ``reduce`` read this module's parameters (AttnRes' final
        read): the model calls them outside the block's forward, so FSDP2 must gather them
        there too (:func:`hyperfrac.train.parallel.apply_fsdp`)."""
        return False

    def expand(self, x: Tensor) -> Tensor:
        raise NotImplementedError

    def reduce(self, h: Tensor) -> Tensor:
        raise NotImplementedError

    def collapse(self, h: Tensor) -> Tensor:
        """The state at any depth as one width-D tensor, for ``output_hidden_states``: the
        connection's ``reduce`` (HC/mHC: the streams' sum; FC: the fractions joined)."""
        return self.reduce(h)

    def width_connection(self, h: Tensor) -> tuple[Tensor, Any]:
        raise NotImplementedError

    def depth_connection(self, out: Tensor, state: Any) -> Tensor:
        raise NotImplementedError

    def connection_matrix(self, h: Tensor | None = None) -> Tensor:
        raise NotImplementedError

    # ------------------------------------------------------------ door checks
    # Cheap by design (dtype and shape metadata only: no device sync, no graph break).
    def _check_input(self, t: Any, what: str) -> None:
        """``t`` must be a floating-point tensor: integer states would be truncated."""
        if not isinstance(t, Tensor):
            raise TypeError(f"{self.kind}: {what} must be a tensor, got {type(t).__name__}")
        if not t.is_floating_point():
            raise TypeError(
                f"{self.kind}: {what} has dtype {t.dtype}; connections mix floating-point "
                "hidden states (embed token ids first, or cast with .float())"
            )

    def _check_branch_output(self, out: Any, want: tuple[int, ...]) -> None:
        """The branch must return one tensor of the shape of its input, ``want``."""
        if not isinstance(out, Tensor):
            raise TypeError(
                f"{self.kind}: the branch returned {type(out).__name__}, expected one tensor of "
                f"shape {want} (a branch with extra outputs must return only the tensor)"
            )
        got = tuple(out.shape)
        if got != want:
            axis = 1 if self.channel_first else -1
            width = got[axis] if len(got) > (1 if self.channel_first else 0) else None
            what = f"width {width}, expected dim={self.dim}: " if width != self.dim else ""
            raise ValueError(
                f"{self.kind}: branch returned {what}shape {got}, but its input had shape "
                f"{want}; a branch must return the shape of its input"
            )

    def forward(self, h: Tensor, branch: Callable[..., Tensor], *args, **kwargs) -> Tensor:
        x, state = self.width_connection(h)
        return self.depth_connection(branch(x, *args, **kwargs), state)

    def _load_from_state_dict(self, state_dict, prefix, *args, **kwargs) -> None:
        # Scalar parameters (s_alpha, s_beta; mHC's alpha_*) are 1-D of size 1 so that FSDP2
        # can shard them; state dicts written before that held them 0-d. Accept both.
        for name, p in self._parameters.items():
            key = prefix + name
            if p is not None and p.shape == (1,) and getattr(state_dict.get(key), "ndim", 1) == 0:
                state_dict[key] = state_dict[key].reshape(1)
        super()._load_from_state_dict(state_dict, prefix, *args, **kwargs)

    # --------------------------------------------------------- optimizer groups
    def no_decay_parameters(self) -> Iterator[nn.Parameter]:
        """Parameters that must not be weight-decayed (HC §4, FC §4.3: static parts)."""
        decay = {id(p) for p in self.decay_parameters()}
        return (p for p in self.parameters() if id(p) not in decay)

    def decay_parameters(self) -> Iterator[nn.Parameter]:
        """Dynamic projections: decayed like any weight matrix."""
        return iter(())

    def extra_repr(self) -> str:
        return f"kind={self.kind}, dim={self.dim}, layer_idx={self.layer_idx}"


class StreamState(NamedTuple):
    """What the width connection hands to the depth connection."""

    h: Tensor  # (N, S, Ds) flattened stream state
    p: Tensor  # (N, S, R) or (S, R): input mixing (kept to recompute the branch input)
    q: Tensor  # (N, S, S) or (S, S): residual mixing
    beta: Tensor  # (N, S) or (S,): output weights
    lead: tuple[int, ...]  # leading shape of the state


class StreamConnection(Connection):
    """Shared machinery of HC, FC and mHC: a state of S slots of width Ds per token.

    Subclasses set ``n_slots`` (S), ``slot_dim`` (Ds), ``n_inputs`` (R: 1 for HC/mHC, S for FC)
    and implement :meth:`coefficients`, returning P (S, R), Q (S, S) and beta (S,) — or the
    same with a leading token axis N for dynamic kinds. The forward pass is exactly

        branch input  x  = P^T h              (HC Eq. 2,   FC Eq. 8,  mHC H_pre x)
        new state     h' = Q^T h + beta * o   (HC Eq. 4-7, FC Eq. 7,  mHC H_res x + H_post^T o)

    i.e. the paper matrix ``[[0, beta], [P, Q]]`` returned by :meth:`connection_matrix`.
    """

    n_slots: int
    slot_dim: int
    n_inputs: int
    #: drop the branch input from saved activations and recompute it in backward
    recompute: bool = False

    # ------------------------------------------------------------ coefficients
    def coefficients(self, hb: Tensor | None) -> tuple[Tensor, Tensor, Tensor]:
        """(P, Q, beta) for a flattened state hb (N, S, Ds); static ones when hb is None."""
        raise NotImplementedError

    def _coefficient_flops(self) -> int:
        """FLOPs per token of computing the coefficients (0 when they are static)."""
        return 0

    def flops_per_token(self) -> int:
        s, ds, r = self.n_slots, self.slot_dim, self.n_inputs
        flops = 2 * s * r * ds  # width: P^T h
        flops += 2 * s * s * ds + 2 * s * ds  # depth: Q^T h + beta * o
        return flops + self._coefficient_flops()

    # ----------------------------------------------------------------- layout
    def _check_state(self, h: Tensor) -> None:
        axes = (1, 2) if self.channel_first else (-2, -1)
        ok = h.dim() >= (3 if self.channel_first else 2)
        if ok:
            ok = (h.shape[axes[0]], h.shape[axes[1]]) == (self.n_slots, self.slot_dim)
        if not ok:
            want = (
                f"(B, {self.n_slots}, {self.slot_dim}, *spatial)"
                if self.channel_first
                else f"(..., {self.n_slots}, {self.slot_dim})"
            )
            raise ValueError(
                f"{self.kind}: stream state has shape {tuple(h.shape)}, expected {want}; "
                "did you call expand() on the input first?"
            )

    def _flatten(self, h: Tensor) -> tuple[Tensor, tuple[int, ...]]:
        """State -> (N, S, Ds) contiguous, plus the leading shape to restore."""
        self._check_input(h, "stream state")
        self._check_state(h)
        if self.channel_first:
            h = h.movedim(1, -1).movedim(1, -1)  # (B, n, C, *sp) -> (B, *sp, n, C)
        lead = tuple(h.shape[:-2])
        # N explicit, not -1: an empty batch (B = 0 or T = 0) has no size to infer
        return h.reshape(math.prod(lead), self.n_slots, self.slot_dim), lead  # (N, S, Ds)

    def _unflatten(self, hb: Tensor, lead: tuple[int, ...]) -> Tensor:
        h = hb.reshape(*lead, self.n_slots, self.slot_dim)  # (..., S, Ds)
        if self.channel_first:
            h = h.movedim(-2, 1).movedim(-1, 2)  # (B, *sp, n, C) -> (B, n, C, *sp)
        return h

    def _to_model(self, xb: Tensor, lead: tuple[int, ...]) -> Tensor:
        """Branch input (N, R, Ds) -> (..., R*Ds) or channel-first (B, R*Ds, *sp)."""
        x = xb.reshape(*lead, self.n_inputs * self.slot_dim)  # (..., D)
        return x.movedim(-1, 1) if self.channel_first else x

    def _model_shape(self, lead: tuple[int, ...]) -> tuple[int, ...]:
        """Shape of the branch input for a state with leading shape ``lead``."""
        return (lead[0], self.dim, *lead[1:]) if self.channel_first else (*lead, self.dim)

    def _from_model(self, out: Tensor, lead: tuple[int, ...]) -> Tensor:
        """Branch output (..., D) or (B, D, *sp), exactly the branch input's shape -> (N, R, Ds)."""
        self._check_branch_output(out, self._model_shape(lead))
        if self.channel_first:
            out = out.movedim(1, -1)
        return out.reshape(math.prod(lead), self.n_inputs, self.slot_dim)  # (N, R, Ds)

    # --------------------------------------------------------------- the halves
    def width_connection(self, h: Tensor) -> tuple[Tensor, Any]:
        hb, lead = self._flatten(h)  # (N, S, Ds)
        p, q, beta = self.coefficients(hb)
        xb = kernels.width_apply(hb, p)  # (N, R, Ds)
        return self._to_model(xb, lead), StreamState(hb, p, q, beta, lead)

    def depth_connection(self, out: Tensor, state: StreamState) -> Tensor:
        ob = self._from_model(out, state.lead)  # (N, R, Ds)
        return self._unflatten(kernels.depth_apply(state.h, state.q, state.beta, ob), state.lead)

    def forward(self, h: Tensor, branch: Callable[..., Tensor], *args, **kwargs) -> Tensor:
        x, state = self.width_connection(h)
        if not (self.recompute and torch.is_grad_enabled()) or torch.compiler.is_compiling():
            return self.depth_connection(branch(x, *args, **kwargs), state)

        # Activation memory (HC App. B: recompute the mixing): the branch's saved copy of its
        # input x is replaced by a recipe, x = P^T h, rebuilt in backward from state.
        def rebuild() -> Tensor:
            return self._to_model(kernels.width_apply(state.h, state.p.detach()), state.lead)

        hooks = RecomputeInput(x, rebuild)
        with torch.autograd.graph.saved_tensors_hooks(hooks.pack, hooks.unpack):
            out = branch(x, *args, **kwargs)
        return self.depth_connection(out, state)

    # ------------------------------------------------------------- introspection
    def connection_matrix(self, h: Tensor | None = None) -> Tensor:
        """Paper-layout matrix ``[[0, beta], [P, Q]]`` of shape (S+1, R+S).

        HC/mHC: (n+1, n+1) = [[0, B], [A_m, A_r]]; FC: (m+1, 2m) = [[0, B], [Y, A]].
        For dynamic kinds pass a stream state ``h`` to get one matrix per token, shape
        (*leading dims of h, S+1, R+S); without ``h`` the static part is returned.
        """
        if h is None:
            p, q, beta = self.coefficients(None)
            lead: tuple[int, ...] = ()
            p, q, beta = p.unsqueeze(0), q.unsqueeze(0), beta.unsqueeze(0)
        else:
            hb, lead = self._flatten(h)
            p, q, beta = self.coefficients(hb)
            n = hb.shape[0]
            p = p.expand(n, *p.shape[-2:])
            q = q.expand(n, *q.shape[-2:])
            beta = beta.expand(n, beta.shape[-1])
        top = torch.cat([beta.new_zeros(beta.shape[0], 1, self.n_inputs), beta.unsqueeze(1)], -1)
        m = torch.cat([top, torch.cat([p, q], dim=-1)], dim=-2)  # (N, S+1, R+S)
        return m.reshape(*lead, *m.shape[-2:]) if lead else m[0]
