"""Mixture-of-experts SwiGLU feed-forward in the OLMoE style (Muennighoff et al. 2024).

* Router: a bias-free linear map D -> E, softmax over experts in fp32, top-k selection. The
  top-k probabilities are used as mixing weights (OLMoE does not renormalise them;
  ``norm_topk_prob=True`` does).
* Load-balancing loss (Switch Transformer, Fedus et al. 2021, Eq. 4; OLMoE §2):
  ``L_lb = E * sum_e f_e * P_e`` with f_e the fraction of the N*k routing assignments that go
  to expert e and P_e the mean router probability of e. It equals 1 for uniform routing.
* Router z-loss (ST-MoE, Zoph et al. 2022, Eq. 5): ``L_z = mean_tokens(logsumexp(logits)^2)``.
* Experts: weights stacked as (E, D, 2H) and (E, H, D); tokens are dispatched with a batched
  matmul (``torch.bmm``), never a Python loop over tokens:

  - ``capacity_factor`` set (default 1.25): static shapes. Each expert gets
    C = ceil(capacity_factor * N * k / E) slots; the slot of an assignment is its running count
    (one-hot cumsum, first choices before second choices), assignments past C are dropped and
    the dropped fraction is reported. Compiles without graph breaks.
  - ``capacity_factor=None``: dropless. Assignments are sorted by expert and each expert runs
    once on its contiguous slice (a loop over the E experts, not over tokens). Data-dependent
    shapes, so it graph-breaks under ``torch.compile``.

A padded batch passes ``token_mask`` (the real tokens): only those are routed (capacity, losses
and load count them alone), pads get a zero output, so a padded batch computes what its real
tokens alone would.

The forward returns ``(out, aux)``; ``aux`` holds the two losses (already weighted by their
coefficients, summed into the training loss by the model) and detached statistics:
``load`` (E,) the fraction of assignments per expert and ``dropped`` the dropped fraction.

Axis legend: N tokens (all leading axes flattened), E experts, k experts per token, C capacity
per expert, D width, H expert hidden width.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor, nn


def load_balancing_loss(probs: Tensor, topk_idx: Tensor, n_experts: int) -> Tensor:
    """Switch/OLMoE balance loss E * sum_e f_e * P_e.

    probs: (N, E) router softmax; topk_idx: (N, k) chosen experts.
    """
    N, k = topk_idx.shape
    counts = torch.zeros(n_experts, device=probs.device, dtype=probs.dtype)
    ones = torch.ones(N * k, device=probs.device, dtype=probs.dtype)
    counts.scatter_add_(0, topk_idx.reshape(-1), ones)
    f = counts / (N * k)  # (E,)
    P = probs.mean(dim=0)  # (E,)
    return n_experts * (f * P).sum()


def router_z_loss(logits: Tensor) -> Tensor:
    """ST-MoE z-loss: mean over tokens of logsumexp(logits)^2. logits: (N, E)."""
    return torch.logsumexp(logits, dim=-1).square().mean()


class MoE(nn.Module):
    """Top-k routed SwiGLU experts with balance and z losses (see module docstring)."""

    def __init__(
        self,
        dim: int,
        n_experts: int,
        top_k: int,
        hidden: int,
        *,
        capacity_factor: float | None = 1.25,
        lb_loss_weight: float = 0.01,
        z_loss_weight: float = 0.001,
        norm_topk_prob: bool = False,
    ) -> None:
        super().__init__()
        if not 1 <= top_k <= n_experts:
            raise ValueError(f"top_k={top_k} must be in [1, n_experts={n_experts}]")
        if capacity_factor is not None and capacity_factor <= 0:
            raise ValueError(f"capacity_factor={capacity_factor} must be > 0 (or None: dropless)")
        self.dim, self.n_experts, self.top_k, self.hidden = dim, n_experts, top_k, hidden
        self.capacity_factor = capacity_factor
        self.lb_loss_weight, self.z_loss_weight = lb_loss_weight, z_loss_weight
        self.norm_topk_prob = norm_topk_prob
        self.router = nn.Linear(dim, n_experts, bias=False)
        self.w_in = nn.Parameter(torch.empty(n_experts, dim, 2 * hidden))  # (E, D, 2H)
        self.w_out = nn.Parameter(torch.empty(n_experts, hidden, dim))  # (E, H, D)

    def capacity(self, n_tokens: int) -> int:
        """Slots per expert for ``n_tokens`` tokens (static-shape mode)."""
        assert self.capacity_factor is not None
        c = math.ceil(self.capacity_factor * n_tokens * self.top_k / self.n_experts)
        return min(max(c, 1), n_tokens)

    def route(self, x: Tensor) -> tuple[Tensor, Tensor, Tensor, Tensor]:
        """x: (N, D) -> logits (N, E), probs (N, E), weights (N, k), idx (N, k); fp32."""
        logits = F.linear(x, self.router.weight.to(x.dtype))  # (N, E)
        if logits.dtype not in (torch.float32, torch.float64):
            logits = logits.float()  # route in fp32 under bf16 autocast
        probs = logits.softmax(dim=-1)
        weights, idx = probs.topk(self.top_k, dim=-1)  # (N, k)
        if self.norm_topk_prob:
            weights = weights / weights.sum(dim=-1, keepdim=True)
        return logits, probs, weights, idx

    def _experts(self, h: Tensor) -> Tensor:
        """h: (E, C, D) -> (E, C, D), one batched SwiGLU per expert."""
        gate, up = torch.bmm(h, self.w_in.to(h.dtype)).chunk(2, dim=-1)  # 2 x (E, C, H)
        return torch.bmm(F.silu(gate) * up, self.w_out.to(h.dtype))

    def _capacity_forward(self, x: Tensor, weights: Tensor, idx: Tensor) -> tuple[Tensor, Tensor]:
        N, D = x.shape
        E, k = self.n_experts, self.top_k
        C = self.capacity(N)
        onehot = F.one_hot(idx.t().reshape(-1), E)  # (k*N, E), first choices first
        pos = (onehot.cumsum(dim=0) - 1).mul_(onehot).sum(dim=-1)  # (k*N,) slot in expert
        expert = idx.t().reshape(-1)  # (k*N,)
        keep = pos < C
        slot = torch.where(keep, expert * C + pos, torch.full_like(pos, E * C))  # E*C = bin
        src = x.repeat(k, 1)  # (k*N, D), row j*N + t is token t's j-th choice
        buf = x.new_zeros(E * C + 1, D).index_add_(0, slot, src)  # unique slots except bin
        y = self._experts(buf[: E * C].view(E, C, D)).reshape(E * C, D)  # (E*C, D)
        y = torch.cat([y, y.new_zeros(1, D)], dim=0)  # (E*C + 1, D), bin row is zero
        w = weights.t().reshape(-1, 1).to(x.dtype)  # (k*N, 1)
        out = (y[slot] * w).view(k, N, D).sum(dim=0)  # (N, D)
        dropped = 1.0 - keep.float().mean()
        return out, dropped

    def _dropless_forward(self, x: Tensor, weights: Tensor, idx: Tensor) -> Tensor:
        N, D = x.shape
        flat_idx = idx.reshape(-1)  # (N*k,)
        order = flat_idx.argsort(stable=True)
        token = order // self.top_k  # token of each sorted assignment
        counts = torch.bincount(flat_idx, minlength=self.n_experts).tolist()
        xs = x[token]  # (N*k, D) grouped by expert
        outs = []
        for e, chunk in enumerate(xs.split(counts, dim=0)):  # loop over experts only
            gate, up = (chunk @ self.w_in[e].to(x.dtype)).chunk(2, dim=-1)
            outs.append((F.silu(gate) * up) @ self.w_out[e].to(x.dtype))
        ys = torch.cat(outs, dim=0) * weights.reshape(-1)[order].unsqueeze(-1).to(x.dtype)
        return x.new_zeros(N, D).index_add_(0, token, ys)

    def forward(
        self, x: Tensor, token_mask: Tensor | None = None
    ) -> tuple[Tensor, dict[str, Tensor]]:
        """x: (..., D); ``token_mask`` (...) True for real tokens (padded batches) or None."""
        if token_mask is not None:
            keep = token_mask.reshape(-1).bool()  # (N,)
            flat = x.reshape(-1, x.shape[-1])  # (N, D)
            out, aux = self.forward(flat[keep])  # (N_real, D)
            full = flat.new_zeros(flat.shape).index_put((keep.nonzero().squeeze(1),), out)
            return full.view(x.shape), aux
        shape = x.shape
        x = x.reshape(-1, shape[-1])  # (N, D)
        logits, probs, weights, idx = self.route(x)
        if self.capacity_factor is None:
            out = self._dropless_forward(x, weights, idx)
            dropped = x.new_zeros((), dtype=torch.float32)
        else:
            out, dropped = self._capacity_forward(x, weights, idx)
        lb = load_balancing_loss(probs, idx, self.n_experts)
        z = router_z_loss(logits)
        with torch.no_grad():  # static-shape count (bincount would break torch.compile graphs)
            load = F.one_hot(idx.reshape(-1), self.n_experts).sum(dim=0).float() / idx.numel()
        aux = {
            "loss": self.lb_loss_weight * lb + self.z_loss_weight * z,
            "lb_loss": lb.detach(),
            "z_loss": z.detach(),
            "load": load,
            "dropped": dropped.detach(),
        }
        return out.view(shape), aux
