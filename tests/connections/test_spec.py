"""validate_spec: one check of a {kind, **options} spec, without building a module."""

import math

import pytest

from hyperfrac.connections import (
    KINDS,
    ConnectionSpecError,
    build,
    options_for,
    schema_for,
    validate_spec,
)


def test_typo_gets_the_exact_suggestion():
    with pytest.raises(ConnectionSpecError) as err:
        validate_spec({"kind": "dhc", "n_stream": 4})
    assert str(err.value).startswith(
        "unknown option 'n_stream' for kind 'dhc' — did you mean 'n_streams'?"
    )


def test_option_of_another_kind_names_that_kind():
    with pytest.raises(ConnectionSpecError, match="'n_fracs' is an option of dfc, fc"):
        validate_spec({"kind": "dhc", "n_fracs": 2})


def test_kind_typo_and_missing_kind():
    with pytest.raises(ConnectionSpecError, match="kind 'dhx' — did you mean 'dhc'"):
        validate_spec({"kind": "dhx"})
    with pytest.raises(ConnectionSpecError, match="has no 'kind'"):
        validate_spec({"n_streams": 4})
    with pytest.raises(ConnectionSpecError, match="is a mapping"):
        validate_spec("dhc")  # type: ignore[arg-type]


def test_returns_a_normalised_copy_and_leaves_the_input_alone():
    spec = {"kind": "dhc", "eps": "1e-5", "freeze": "width", "n_streams": 2, "scale_init": 1}
    out = validate_spec(spec)
    assert out == {"kind": "dhc", "eps": 1e-5, "freeze": ["width"], "n_streams": 2,
                   "scale_init": 1.0}
    assert isinstance(out["scale_init"], float) and list(out)[0] == "kind"
    assert spec["eps"] == "1e-5" and spec["freeze"] == "width"


@pytest.mark.parametrize(
    "spec,message",
    [
        ({"kind": "dhc", "tanh": "false"}, "tanh must be a bool"),
        ({"kind": "mhc", "norm": 1}, "norm must be a bool"),
        ({"kind": "dhc", "n_streams": True}, "n_streams must be an integer >= 1"),
        ({"kind": "dfc", "n_fracs": 2.0}, "n_fracs must be an integer >= 1"),
        ({"kind": "mhc", "sinkhorn_iters": 0}, "sinkhorn_iters must be an integer >= 1"),
        ({"kind": "dhc", "eps": -1}, "eps must be a finite number > 0"),
        ({"kind": "postnorm", "eps": 0.0}, "eps must be a finite number > 0"),
        ({"kind": "mhc", "scale_init": math.nan}, "scale_init must be a finite number > 0"),
        ({"kind": "dfc", "scale_init": math.inf}, "scale_init must be a finite number > 0"),
        ({"kind": "dhc", "eps": "tiny"}, "eps must be a finite number > 0"),
        ({"kind": "mhc", "pre_init": 1.0}, "pre_init must be a number strictly between 0 and 1"),
        ({"kind": "dhc", "norm_type": "batchnorm"}, "norm_type must be one of"),
        ({"kind": "dhc", "freeze": ["width", "all"]}, "freeze must be a list drawn from"),
        ({"kind": "dhc", "freeze": 3}, "freeze must be a list drawn from"),
        ({"kind": "residual", "channel_first": "yes"}, "channel_first must be a bool"),
    ],
)
def test_bad_values_are_refused_by_spec_and_by_build(spec, message):
    with pytest.raises(ConnectionSpecError, match=message):
        validate_spec(spec)
    options = dict(spec)
    with pytest.raises(ConnectionSpecError, match=message):
        build(options.pop("kind"), 16, **options)


@pytest.mark.parametrize("kind", KINDS)
def test_every_schema_option_is_documented(kind):
    schema = schema_for(kind)
    assert set(schema) == options_for(kind)
    assert all(opt.doc for opt in schema.values())


@pytest.mark.parametrize("dim", [16.7, 16.0, 0, True, "16"])
def test_dim_must_be_a_positive_integer(dim):
    with pytest.raises(ValueError, match="dim must be an integer >= 1"):
        build("dhc", dim)


def test_layer_idx_must_be_a_non_negative_integer():
    with pytest.raises(ValueError, match="layer_idx must be an integer >= 0"):
        build("residual", 8, layer_idx=-1)
    with pytest.raises(ValueError, match="layer_idx must be an integer >= 0"):
        build("hc", 8, layer_idx=1.5)
