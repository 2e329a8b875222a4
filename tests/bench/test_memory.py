"""``peak_live_bytes``: the peak of live tensor storage during a function, allocator-free."""

from __future__ import annotations

import torch

from hyperfrac.bench.memory import peak_live_bytes, saved_tensor_bytes

MB = 2**20


def test_peak_counts_what_is_held_at_once_and_not_what_was_freed() -> None:
    def held():
        a = torch.ones(MB // 4)  # 1 MiB
        b = torch.ones(MB // 2)  # 2 MiB while a lives
        return float(a.sum() + b.sum())

    def sequential():
        for _ in range(5):  # 1 MiB at a time, five times
            float(torch.ones(MB // 4).sum())

    assert 3 * MB <= peak_live_bytes(held) < 3 * MB + 4096
    assert MB <= peak_live_bytes(sequential) < MB + 4096


def test_tensors_saved_for_backward_stay_live_until_backward() -> None:
    w = torch.randn(256, 256, requires_grad=True)

    def step():
        h = torch.randn(1024, 256)  # 1 MiB input
        for _ in range(4):
            h = torch.tanh(h @ w)  # each tanh output (1 MiB) is saved for backward
        h.sum().backward()

    peak = peak_live_bytes(step, before=[w])
    # the input, the four saved tanh outputs and the matmul temporaries are live at once
    assert peak >= 5 * MB
    # the parameter (and its storage) is excluded; its gradient (256 KiB) is not
    assert peak < 9 * MB
    assert saved_tensor_bytes(lambda: torch.tanh(torch.randn(1024, 256) @ w), exclude=[w]) > 0


def test_views_and_in_place_ops_do_not_double_count() -> None:
    def fn():
        a = torch.zeros(MB // 4)
        v = a.view(16, -1)[1:]  # a view: same storage
        v.add_(1.0)  # in place: same storage
        return float(a.sum())

    assert MB <= peak_live_bytes(fn) < MB + 4096
