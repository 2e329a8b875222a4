"""Inputs checked at the door (issue 11 item 7): every bad input below gets a clear error,
and empty batches work for every kind."""

import math

import pytest
import torch

from hyperfrac.connections import KINDS, ConnectionSpecError, build, connection_class

D, B, T = 8, 2, 3


def _opts(kind: str) -> dict:
    """Two slots for every kind that has them (found through the registry, not by name)."""
    option = connection_class(kind).slot_option
    return {option: 2} if option else {}


def _linear(seed: int = 0) -> torch.nn.Linear:
    torch.manual_seed(seed)
    return torch.nn.Linear(D, D)


# (label, bad branch, exception, message): the branch receives a (B, T, D) input
BAD_BRANCHES = [
    ("sequence doubled (B, 2T, D)", lambda x: torch.cat([x, x], dim=1), ValueError,
     r"branch returned shape \(2, 6, 8\), but its input had shape \(2, 3, 8\)"),
    ("batch and time swapped (T, B, D)", lambda x: x.transpose(0, 1), ValueError,
     r"branch returned shape \(3, 2, 8\), but its input had shape \(2, 3, 8\)"),
    ("broadcastable (B, 1, D)", lambda x: x[:, :1], ValueError,
     r"branch returned shape \(2, 1, 8\)"),
    ("wrong width (B, T, D/2)", lambda x: x[..., : D // 2], ValueError,
     r"branch returned width 4, expected dim=8"),
    ("a tuple", lambda x: (x, x.sum()), TypeError, r"the branch returned tuple"),
    ("None", lambda x: None, TypeError, r"the branch returned NoneType"),
]


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("label,branch,exc,message", BAD_BRANCHES,
                         ids=[b[0] for b in BAD_BRANCHES])
def test_bad_branch_output_is_refused_naming_the_kind(kind, label, branch, exc, message):
    conn = build(kind, D, **_opts(kind))
    h = conn.expand(torch.randn(B, T, D))
    with pytest.raises(exc, match=f"^{kind}: .*" + message):
        conn(h, branch)
    x, state = conn.width_connection(h)  # the public halves check the same
    with pytest.raises(exc, match=message):
        conn.depth_connection(branch(x), state)


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("dtype", [torch.int64, torch.int32, torch.bool])
def test_integer_inputs_are_refused(kind, dtype):
    conn = build(kind, D, **_opts(kind))
    x = torch.ones(B, T, D, dtype=dtype)
    with pytest.raises(TypeError, match=f"^{kind}: input has dtype {dtype}"):
        conn.expand(x)
    h = conn.expand(torch.ones(B, T, D)).to(dtype)  # a state cast after expand
    with pytest.raises(TypeError, match=f"dtype {dtype}"):
        conn(h, _linear())


# (spec options, message): values validate_spec refuses, through build() too
BAD_OPTIONS = [
    ({"kind": "dhc", "eps": -1}, "dhc: eps must be a finite number > 0, got -1"),
    ({"kind": "dfc", "eps": -1.0}, "dfc: eps must be a finite number > 0"),
    ({"kind": "mhc", "scale_init": math.nan}, "mhc: scale_init must be a finite number > 0"),
    ({"kind": "dhc", "scale_init": math.nan}, "dhc: scale_init must be a finite number > 0"),
    ({"kind": "dhc", "tanh": "false"}, "dhc: tanh must be a bool .* got 'false'"),
    ({"kind": "mhc", "tanh": "false"}, "mhc: tanh must be a bool"),
    ({"kind": "dfc", "rescale": "no"}, "dfc: rescale must be a bool"),
]


@pytest.mark.parametrize("spec,message", BAD_OPTIONS, ids=[str(s) for s, _ in BAD_OPTIONS])
def test_bad_option_values_are_refused(spec, message):
    options = dict(spec)
    with pytest.raises(ConnectionSpecError, match=message):
        build(options.pop("kind"), D, **options)


@pytest.mark.parametrize("dim", [16.7, 8.0, "8", None])
def test_dim_must_be_an_integer(dim):
    with pytest.raises(ValueError, match=f"dim must be an integer >= 1, got {dim!r}"):
        build("dhc", dim, n_streams=2)


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("shape", [(0, T, D), (B, 0, D)], ids=["B=0", "T=0"])
def test_empty_batches_give_empty_results_and_zero_gradients(kind, shape):
    torch.manual_seed(0)
    conn = build(kind, D, **_opts(kind))
    with torch.no_grad():  # off the init, so zero gradients are not zero by symmetry
        for p in conn.parameters():
            p.add_(torch.randn_like(p) * 0.1)
    branch = _linear()
    x = torch.randn(*shape, requires_grad=True)
    y = conn.reduce(conn(conn.expand(x), branch))
    assert y.shape == shape and y.dtype == x.dtype
    y.square().sum().backward()
    assert x.grad is not None and x.grad.shape == shape
    for name, p in conn.named_parameters():
        assert p.grad is not None and torch.equal(p.grad, torch.zeros_like(p)), name
    assert torch.equal(branch.weight.grad, torch.zeros_like(branch.weight))
