"""Configs: YAML + dotted overrides, type checks, round trip, every shipped config builds."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from hyperfrac.cli import main
from hyperfrac.models import build_model, count_params
from hyperfrac.train.config import RunConfig, dump_config, from_dict, load_config

ROOT = Path(__file__).resolve().parents[2]
CONFIGS = sorted((ROOT / "configs").glob("*.yaml"))


def test_there_are_shipped_configs() -> None:
    assert len(CONFIGS) >= 5


@pytest.mark.parametrize("path", CONFIGS, ids=lambda p: p.name)
def test_every_shipped_config_builds(path: Path) -> None:
    cfg = load_config(path)
    model = build_model(cfg.model, device="meta")
    assert count_params(model) > 0
    assert cfg.name == path.stem  # run folder named after the file
    again = from_dict(RunConfig, yaml.safe_load(dump_config(cfg)))
    assert again == cfg  # YAML round trip is exact


def test_overrides_types_and_presets(tmp_path: Path) -> None:
    cfg = load_config(
        ROOT / "configs" / "cpu-6x256.yaml",
        [
            "optim.lr=3e-4",
            "train.compile=true",
            "model.connection={kind: dhc, n_streams: 4}",
            "model.moe.n_experts=4",
            "train.stop_at=7",
            "optim.betas=[0.9, 0.99]",
        ],
    )
    assert cfg.optim.lr == 3e-4 and cfg.train.compile is True and cfg.train.stop_at == 7
    assert cfg.model.connection == {"kind": "dhc", "n_streams": 4}
    assert cfg.model.dim == 256 and cfg.model.n_layers == 6  # from the preset
    assert cfg.model.moe is not None and cfg.model.moe.n_experts == 4 and cfg.model.moe.top_k == 2
    assert cfg.optim.betas == (0.9, 0.99)
    assert load_config(None, ["model.connection.kind=postnorm"]).model.connection == {
        "kind": "postnorm"
    }


@pytest.mark.parametrize(
    "override, error, match",
    [
        ("optim.lrr=1", KeyError, "unknown key.*optim.*valid keys"),
        ("train.steps=ten", TypeError, "train.steps: expected an integer"),
        ("train.precision=fp8", ValueError, "train.precision='fp8'; choose one of"),
        ("data.seq_len=4096", ValueError, "exceeds model.max_seq_len"),
        ("train.compile=1", TypeError, "expected true/false"),
        ("optim.lr", ValueError, "key.sub=value"),
        ("model.preset=nope", KeyError, "unknown model preset"),
    ],
)
def test_bad_overrides_say_what_is_wrong(override: str, error: type, match: str) -> None:
    with pytest.raises(error, match=match):
        load_config(ROOT / "configs" / "cpu-6x256.yaml", [override])


def test_cli_dry_run_prints_resolved_config(capsys: pytest.CaptureFixture) -> None:
    assert main(["train", str(ROOT / "configs" / "tiny.yaml"), "optim.lr=5e-4", "--dry-run"]) == 0
    out = yaml.safe_load(capsys.readouterr().out)
    assert out["optim"]["lr"] == 5e-4
    assert out["model"]["dim"] == 64 and "preset" not in out["model"]


def test_missing_dataset_says_how_to_prepare(tmp_path: Path) -> None:
    from hyperfrac.train import Trainer

    cfg = load_config(ROOT / "configs" / "tiny.yaml", [f"data.path={tmp_path / 'none'}"])
    with pytest.raises(FileNotFoundError, match="hyperfrac data prepare --corpus shakespeare"):
        Trainer(cfg)


FREE_STRINGS = {
    "RunConfig": {"name", "out_dir"},  # name: checked as a folder name
    "DataConfig": {"kind", "corpus", "path"},  # kind and corpus: checked in validate
    "TrainConfig": {"device"},  # parsed by torch.device
    "CheckpointConfig": {"resume"},  # auto | never | a path
    "LMConfig": {"norm"},  # checked by LMConfig.validate
    "ViTConfig": {"norm", "pool"},  # checked by ViTConfig.validate
}


def test_every_numeric_and_word_field_has_a_range() -> None:
    """A field added to a section without a range (or a word list) fails here, so no value
    reaches a run unchecked."""
    import dataclasses
    import typing

    from hyperfrac.train.config import CHOICES, RANGES

    for cls in RANGES:
        hints = typing.get_type_hints(cls)
        for f in dataclasses.fields(cls):
            tp = hints[f.name]
            if typing.get_origin(tp) in (tuple, dict):  # betas: OptimConfig.validate; connection:
                # connections.validate_spec; rope_scaling: models.layers.Rotary (at build)
                assert f.name in {"betas", "rope_scaling", "connection"}, f.name
                continue
            args = set(typing.get_args(tp)) or {tp}  # X | None -> {X, None}
            if args & {int, float}:
                assert f.name in RANGES[cls], f"{cls.__name__}.{f.name} has no range"
            elif str in args:
                known = CHOICES.get(cls, {}).keys() | FREE_STRINGS.get(cls.__name__, set())
                assert f.name in known, f"{cls.__name__}.{f.name} has no word list"


def test_from_dict_checks_a_whole_run_but_not_a_section() -> None:
    """A run folder's stored config goes through from_dict, so it is checked too; a section
    built alone is checked by its own validate()."""
    from hyperfrac.train.config import OptimConfig

    with pytest.raises(ValueError, match="optim.warmup_steps=-1 must be >= 0"):
        from_dict(RunConfig, {"optim": {"warmup_steps": -1}})
    section = from_dict(OptimConfig, {"warmup_steps": -1})
    with pytest.raises(ValueError, match="optim.warmup_steps=-1"):
        section.validate()
    RunConfig().validate()  # the defaults are valid


def test_warmup_longer_than_the_run_is_allowed() -> None:
    """Short test runs keep their config's warmup (tiny: 20 steps) with train.steps=12."""
    assert load_config("tiny", ["train.steps=12"]).optim.warmup_steps == 20
