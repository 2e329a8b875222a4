"""Pre-Norm, sequential and parallel arrangements as fixed HC matrices (HC §3, App. G-H)."""

import torch

from hyperfrac.connections import build

from .helpers import build_stack, mlp_branches, perturb, run_stack

D = 8


def _set_static(conn, a_m, a_r, b):
    with torch.no_grad():
        conn.static_alpha.copy_(torch.cat([a_m.reshape(-1, 1), a_r], dim=1))
        conn.static_beta.copy_(b)


def test_hc_n1_fixed_matrix_is_prenorm():
    x = torch.randn(2, 3, D, dtype=torch.float64)
    branches = mlp_branches(4, D)
    conns = build_stack("hc", D, 4, n_streams=1)
    for c in conns:
        torch.testing.assert_close(c.connection_matrix(),
                                   torch.tensor([[0.0, 1.0], [1.0, 1.0]], dtype=torch.float64))
    ref = run_stack(build_stack("residual", D, 4), branches, x)
    torch.testing.assert_close(run_stack(conns, branches, x), ref, rtol=0, atol=0)


def test_fc_m1_equals_hc_n1_with_the_same_parameters():
    """FC and HC coincide at n = m = 1 (FC §4.1), dynamic part included."""
    torch.manual_seed(0)
    hc = build("dhc", D, n_streams=1, norm_type="rmsnorm", norm_affine=True).double()
    fc = build("dfc", D, n_fracs=1).double()
    perturb(hc, 0.4)
    fc.load_state_dict(hc.state_dict())
    branch = mlp_branches(1, D)[0]
    x = torch.randn(2, 5, D, dtype=torch.float64)
    out_hc = hc.reduce(hc(hc.expand(x), branch))
    out_fc = fc.reduce(fc(fc.expand(x), branch))
    torch.testing.assert_close(out_fc, out_hc, rtol=0, atol=1e-14)


def test_sequential_arrangement_eq42_is_a_residual_net():
    """[[0, 1_n], [e_1, I_n]] at every layer reproduces the sequential residual net."""
    n, L = 3, 5
    x = torch.randn(2, 4, D, dtype=torch.float64)
    branches = mlp_branches(L, D)
    conns = build_stack("hc", D, L, n_streams=n)
    for c in conns:
        _set_static(c, torch.eye(n)[0], torch.eye(n), torch.ones(n))
    ref = run_stack(build_stack("residual", D, L), branches, x)
    torch.testing.assert_close(run_stack(conns, branches, x) / n, ref, rtol=0, atol=1e-12)


def test_parallel_arrangement_eq53_55_runs_n_branches_on_one_input():
    """Groups of n layers: the first reads the sum of the streams (A_m = 1, A_r = 1 1^T,
    B = e_1), layer i reads stream i and writes it (A_m = e_i, A_r = I, B = e_i). Every layer of a
    group therefore sees the same input S (the sum of the streams), and the next group reads
    S' = n S + sum_i f_i(S): n parallel branches, with the residual rescaled by n per group
    (scale-free behind the branches' pre-norm)."""
    n, groups = 2, 3
    x = torch.randn(2, 4, D, dtype=torch.float64)
    branches = mlp_branches(n * groups, D)
    conns = build_stack("hc", D, n * groups, n_streams=n)
    eye = torch.eye(n, dtype=torch.float64)
    for k, c in enumerate(conns):
        i = k % n
        if i == 0:
            _set_static(c, torch.ones(n), torch.ones(n, n), eye[0])
        else:
            _set_static(c, eye[i], eye, eye[i])
    seen = []

    def recorder(f):
        def g(inp):
            seen.append(inp)
            return f(inp)
        return g

    h = torch.stack([x, torch.zeros_like(x)], dim=-2)  # all of x in stream 1: sum = x
    for c, b in zip(conns, branches, strict=True):
        h = c(h, recorder(b))
    s = x
    for g in range(groups):
        for i in range(n):
            torch.testing.assert_close(seen[g * n + i], s, rtol=0, atol=1e-12)
        s = n * s + sum(branches[g * n + i](s) for i in range(n))
    torch.testing.assert_close(h.sum(-2), s, rtol=0, atol=1e-12)
