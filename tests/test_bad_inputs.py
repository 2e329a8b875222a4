"""Inputs checked at the door (issue 11, item 8): every bad config value, CLI argument and
dataset listed there, and more of the same kind, is refused where it comes in, with a message
that names the value and the fix; and nothing valid is refused (every shipped config, its
resolved YAML and every compare preset's arms still load).

The connection-option cases belong to tests/connections, the compare ``--arm`` case to
tests/compare.
"""

from __future__ import annotations

import json
import shutil
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest

from hyperfrac.cli import main
from hyperfrac.data import (
    ImageLoader,
    TokenLoader,
    eval_batches,
    load_images,
    open_tokens,
    validate_image_dataset,
    validate_text_dataset,
)
from hyperfrac.data.vision import FILES, _write_dataset, encode_idx
from hyperfrac.resources import run_config_names
from hyperfrac.train.config import dump_config, load_config

# ------------------------------------------------------------------------------------ configs

CONFIG_CASES = [
    # issue 11 item 8, as reported
    ("optim.min_lr_ratio=-5", r"optim.min_lr_ratio=-5.0 must be a finite number in \[0, 1\]"),
    ("optim.warmup_steps=-10", r"optim.warmup_steps=-10 must be >= 0"),
    ("train.stop_at=-3", r"train.stop_at=-3 must be >= 1 or null"),
    ("data.seq_len=100000", r"data.seq_len=100000 exceeds model.max_seq_len=256"),
    ("name=../x", r"name='../x' must be one plain folder name"),
    # the rest of the optimizer
    ("optim.lr=.inf", r"optim.lr=inf must be a finite number > 0"),
    ("optim.lr=0", r"optim.lr=0.0 must be a finite number > 0"),
    ("optim.lr=.nan", r"optim.lr=nan must be a finite number"),
    ("optim.betas=[0.9, 1.0]", r"optim.betas\[1\]=1.0 must be a finite number in \[0, 1\)"),
    ("optim.betas=[-0.1, 0.9]", r"optim.betas\[0\]=-0.1"),
    ("optim.eps=0", r"optim.eps=0.0 must be a finite number > 0"),
    ("optim.weight_decay=-0.1", r"optim.weight_decay=-0.1 must be a finite number >= 0"),
    ("optim.grad_clip=-1", r"optim.grad_clip=-1.0 must be a finite number >= 0"),
    ("optim.min_lr_ratio=1.5", r"optim.min_lr_ratio=1.5 must be"),
    ("optim.decay_fraction=2", r"optim.decay_fraction=2.0 must be .* in \[0, 1\]"),
    ("optim.schedule=cosin", r"optim.schedule='cosin'; choose one of .* did you mean 'cosine'"),
    # training loop
    ("train.steps=0", r"train.steps=0 must be >= 1"),
    ("train.batch_size=0", r"train.batch_size=0 must be >= 1"),
    ("train.grad_accum=0", r"train.grad_accum=0 must be >= 1"),
    ("train.threads=0", r"train.threads=0 must be >= 1 or null"),
    ("train.max_skipped_steps=-1", r"train.max_skipped_steps=-1 must be >= 0"),
    ("train.spike_window=1", r"train.spike_window=1 must be >= 2"),
    ("train.spike_sigma=0", r"train.spike_sigma=0.0 must be a finite number > 0"),
    ("train.spike_window=10", r"spike_min_history=20 exceeds train.spike_window=10"),
    ("train.precision=bf61", r"train.precision='bf61'; .* did you mean 'bf16'"),
    ("train.parallel=fsdp2", r"train.parallel='fsdp2'; choose one of"),
    ("train.on_nonfinite=rase", r"train.on_nonfinite='rase'; .* did you mean 'raise'"),
    ("train.device=gpu", r"train.device='gpu' is no torch device"),
    # evaluation, checkpoints, logging
    ("eval.max_batches=0", r"eval.max_batches=0 must be >= 1 or null"),
    ("eval.interval=-1", r"eval.interval=-1 must be >= 0"),
    ("eval.batch_size=0", r"eval.batch_size=0 must be >= 1"),
    ("checkpoint.keep=0", r"checkpoint.keep=0 must be >= 1"),
    ("checkpoint.interval=-5", r"checkpoint.interval=-5 must be >= 0"),
    ("checkpoint.format=shard", r"checkpoint.format='shard'; .* did you mean 'sharded'"),
    ("checkpoint.resume=nevr", r"checkpoint.resume='nevr' is neither .* did you mean 'never'"),
    ("log.interval=0", r"log.interval=0 must be >= 1"),
    ("log.progress=sometimes", r"log.progress='sometimes'; choose one of"),
    # run, data and model
    ("name=a/b", r"name='a/b' must be one plain folder name"),
    ("name=..", r"name='..' must be one plain folder name"),
    ("seed=-1", r"seed=-1 must be in \[0, 4294967296\)"),
    ("data.seq_len=0", r"data.seq_len=0 must be >= 1"),
    ("data.vocab_size=100", r"data.vocab_size=100 must be >= 258"),
    ("data.corpus=shakspeare", r"data.corpus='shakspeare'; .* did you mean 'shakespeare'"),
    ("data.kind=fashion-mnist", r"data.kind='fashion-mnist'; .* did you mean 'fashion_mnist'"),
    ("model.n_heads=0", r"model.n_heads=0 must be >= 1"),
    ("model.max_seq_len=0", r"model.max_seq_len=0 must be >= 1"),
    ("model.norm_eps=0", r"model.norm_eps=0.0 must be a finite number > 0"),
    ("model.rope_theta=-1", r"model.rope_theta=-1.0 must be a finite number > 0"),
    ("model.moe={n_experts: 2, top_k: 3}", r"model.moe.top_k=3 exceeds model.moe.n_experts=2"),
    ("model.moe={capacity_factor: 0}", r"model.moe.capacity_factor=0.0 must be"),
]


@pytest.mark.parametrize("override, match", CONFIG_CASES, ids=[c[0] for c in CONFIG_CASES])
def test_bad_config_value_is_refused_at_load(override: str, match: str) -> None:
    with pytest.raises(ValueError, match=match) as info:
        load_config("tiny", [override])
    assert "; " in str(info.value)  # what is wrong, then how to fix it


def test_bad_config_value_fails_the_dry_run(capsys: pytest.CaptureFixture) -> None:
    message = _cli_error(["train", "tiny", "optim.min_lr_ratio=-5", "--dry-run"], capsys)
    assert "optim.min_lr_ratio=-5.0 must be a finite number in [0, 1]" in message


def test_range_errors_suggest_the_default() -> None:
    with pytest.raises(ValueError, match=r"e.g. optim.min_lr_ratio=0.1 \(the default\)"):
        load_config("tiny", ["optim.min_lr_ratio=-5"])


def test_unknown_key_suggests_the_near_one() -> None:
    with pytest.raises(KeyError, match="did you mean 'lr'"):
        load_config("tiny", ["optim.lrr=1"])


def test_connection_option_typo_fails_at_config_load() -> None:
    with pytest.raises(ValueError, match="unknown option 'n_stream' for kind 'dhc' — did you mean"):
        load_config("tiny", ["model.connection={kind: dhc, n_stream: 4}"])


def test_image_runs_check_the_vit_section() -> None:
    with pytest.raises(ValueError, match=r"model.num_classes=0 must be >= 1"):
        load_config("vit-fmnist-tiny", ["model.num_classes=0"])


# ------------------------------------------------------------------------ valid inputs pass


@pytest.mark.parametrize("name", run_config_names())
def test_shipped_config_and_its_resolved_yaml_load(name: str, tmp_path: Path) -> None:
    cfg = load_config(name)
    resolved = tmp_path / "config.yaml"  # as a run folder stores it
    resolved.write_text(dump_config(cfg))
    assert load_config(resolved) == cfg


def test_every_compare_preset_arm_config_validates(tmp_path: Path) -> None:
    from hyperfrac.compare import arm_config, available_presets, load_spec

    presets = available_presets()
    assert "default" in presets and "smoke" in presets
    for preset in presets:
        spec = load_spec(preset)
        for arm in spec.arms:
            cfg = arm_config(spec, arm, spec.seeds[0], tmp_path)  # validates
            assert load_config(_dumped(cfg, tmp_path)) == cfg


def _dumped(cfg, tmp_path: Path) -> Path:
    path = tmp_path / "resolved.yaml"
    path.write_text(dump_config(cfg))
    return path


# ---------------------------------------------------------------------------- command line


def _cli_error(argv: list[str], capsys: pytest.CaptureFixture) -> str:
    """The error of a refused command: exit status 2 with the message on stderr (argparse's
    SystemExit or the CLI's returned 2), or the exception a subcommand raised."""
    try:
        rc = main(argv)
        if rc == 2:
            return capsys.readouterr().err
    except SystemExit as e:
        assert e.code == 2, f"{argv} exited with {e.code}, not 2"
        return capsys.readouterr().err
    except (ValueError, KeyError, TypeError) as e:
        return str(e)
    raise AssertionError(f"{argv} was accepted")


CLI_CASES = [
    (["eval", "RUN", "--max-batches", "0"], "argument --max-batches: 0 is below 1"),
    (["eval", "RUN", "--batch-size", "0"], "argument --batch-size: 0 is below 1"),
    (["eval", "RUN", "--batch-size", "two"], "'two' is not an integer"),
    (["eval", "RUN", "--max-items", "-1"], "argument --max-items: -1 is below 1"),
    (["eval", "RUN", "--threads", "0"], "argument --threads: 0 is below 1"),
    (["eval", "RUN", "--suites", "lastwrd"], "unknown suite(s) ['lastwrd']"),
    (["data", "prepare", "--vocab-size", "100"], "--vocab-size: 100 is below 258"),
    (["data", "prepare", "--chunk-bytes", "0"], "--chunk-bytes: 0 is below 1"),
    (["data", "prepare", "--val-every", "0"], "--val-every: 0 is below 1"),
    (["data", "prepare", "--val-offset", "60"], "--val-offset 60 must be below --val-every 50"),
]


@pytest.mark.parametrize("argv, match", CLI_CASES, ids=[" ".join(c[0]) for c in CLI_CASES])
def test_bad_cli_argument_is_refused(
    argv: list[str], match: str, tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    argv = [str(tmp_path) if a == "RUN" else a for a in argv]
    if argv[:2] == ["data", "prepare"]:
        argv += ["--cache", str(tmp_path / "cache")]  # never touches the real cache
    assert match in _cli_error(argv, capsys)
    if argv[:2] == ["data", "prepare"]:
        assert not (tmp_path / "cache").exists()  # refused before any work


# --------------------------------------------------------------------------- text datasets


def _write_json(path: Path, obj) -> None:
    path.write_text(json.dumps(obj))


def _edit_meta(edit: Callable[[dict], None]) -> Callable[[Path], None]:
    def apply(d: Path) -> None:
        meta = json.loads((d / "meta.json").read_text())
        edit(meta)
        _write_json(d / "meta.json", meta)

    return apply


def _poke_id(d: Path) -> None:
    tokens = np.fromfile(d / "val.bin", dtype=np.uint16)
    tokens[3] = 600  # the tokenizer has fewer ids (at most 512)
    tokens.tofile(d / "val.bin")


TEXT_CASES = {
    "meta not JSON": (
        lambda d: (d / "meta.json").write_text("{not json"),
        r"meta.json is not valid JSON \(.*\); re-run `hyperfrac data prepare",
    ),
    "meta missing": (lambda d: (d / "meta.json").unlink(), r"meta.json is missing; re-run"),
    "meta without dtype": (
        _edit_meta(lambda m: m.pop("dtype")),
        r"meta.json has dtype=None, not one of",
    ),
    "not prepared": (lambda d: (d / "READY").unlink(), r"no prepared dataset at .*data prepare"),
    "empty val split": (
        lambda d: (d / "val.bin").write_bytes(b""),
        r"val.bin is empty \(0 tokens\); re-run",
    ),
    "val split missing": (lambda d: (d / "val.bin").unlink(), r"val.bin is missing; re-run"),
    "truncated train split": (
        lambda d: (d / "train.bin").write_bytes((d / "train.bin").read_bytes()[:-2]),
        r"train.bin is .* bytes but meta.json says .* tokens .*truncated",
    ),
    "id beyond the vocabulary": (
        _poke_id,
        r"val.bin holds token id 600 but the tokenizer has \d+ ids .*corrupt or from another",
    ),
    "val shorter than a window": (
        lambda d: _shorten(d, "val", 50),
        r"the val split of .* has 50 tokens, fewer than one window of data.seq_len \+ 1 = 129",
    ),
    "tokenizer larger than the model": (
        _edit_meta(lambda m: m.update(vocab_size=1000)),
        r"has 1000 tokens but model.vocab_size=512; set model.vocab_size >= 1000",
    ),
    "token bytes missing": (
        lambda d: (d / "token_bytes.npy").unlink(),
        r"token_bytes.npy is missing; re-run",
    ),
}


def _shorten(d: Path, split: str, n: int) -> None:
    tokens = np.fromfile(d / f"{split}.bin", dtype=np.uint16)[:n]
    tokens.tofile(d / f"{split}.bin")
    _edit_meta(lambda m: m["splits"][split].update(tokens=n))(d)


@pytest.fixture
def text_copy(tiny_dataset: Path, tmp_path: Path) -> Path:
    """A private copy of the session's prepared dataset (vocab 512), free to break."""
    return Path(shutil.copytree(tiny_dataset, tmp_path / "fixture-bpe512"))


@pytest.mark.parametrize("case", list(TEXT_CASES))
def test_broken_text_dataset_is_refused_when_opened(case: str, text_copy: Path) -> None:
    breaker, match = TEXT_CASES[case]
    validate_text_dataset(text_copy, vocab_size=512, seq_len=128)  # fine before
    breaker(text_copy)
    with pytest.raises((ValueError, FileNotFoundError), match=match) as info:
        validate_text_dataset(text_copy, vocab_size=512, seq_len=128)
    assert "cannot mmap" not in str(info.value) and "index out of range" not in str(info.value)


def test_fix_names_the_cache_folder_corpus(text_copy: Path) -> None:
    (text_copy / "val.bin").write_bytes(b"")
    with pytest.raises(ValueError, match="--corpus fixture --vocab-size 512 --force"):
        open_tokens(text_copy, "val")


# -------------------------------------------------------------------------- image datasets


def _image_dataset(root: Path, n: int = 8, classes: int = 8) -> Path:
    rng = np.random.default_rng(0)
    arrays = {}
    for split in ("train", "test"):
        arrays[(split, "images")] = rng.integers(0, 256, (n, 28, 28), dtype=np.uint8)
        arrays[(split, "labels")] = (np.arange(n) % classes).astype(np.uint8)
    return _write_dataset(root / "fashion_mnist", arrays, {"name": "fashion_mnist"})


IMAGE_CASES = {
    "meta not JSON": (
        lambda d: (d / "meta.json").write_text("nope"),
        r"meta.json is not valid JSON .*hyperfrac data prepare --corpus fashion_mnist --force",
    ),
    "label beyond meta's classes": (
        _edit_meta(lambda m: m.update(num_classes=5)),
        r"train-labels-idx1-ubyte.gz holds label 7 but meta.json says num_classes=5; re-run",
    ),
    "label beyond the model's classes": (
        None,  # the dataset is fine; the model has 4 classes
        r"labels at .* go up to 7 but model.num_classes=4; set model.num_classes >= 8",
    ),
    "corrupt labels file": (
        lambda d: (d / "t10k-labels-idx1-ubyte.gz").write_bytes(b"\x1f\x8b\x08\x00garbage"),
        r"corrupt gzip stream .*; re-run `hyperfrac data prepare --corpus fashion_mnist",
    ),
}


@pytest.mark.parametrize("case", list(IMAGE_CASES))
def test_broken_image_dataset_is_refused_when_opened(case: str, tmp_path: Path) -> None:
    breaker, match = IMAGE_CASES[case]
    path = _image_dataset(tmp_path)
    validate_image_dataset(path, num_classes=10, image_size=28)  # fine before
    if breaker is not None:
        breaker(path)
    classes = 4 if breaker is None else 10
    with pytest.raises(ValueError, match=match):
        validate_image_dataset(path, num_classes=classes, image_size=28)


def test_image_size_mismatch_names_the_fix(tmp_path: Path) -> None:
    path = _image_dataset(tmp_path)
    with pytest.raises(ValueError, match="model.image_size=32.*set model.image_size=28"):
        validate_image_dataset(path, num_classes=10, image_size=32)


def test_empty_image_split_is_refused(tmp_path: Path) -> None:
    path = _image_dataset(tmp_path)
    (path / FILES[("test", "images")]).write_bytes(encode_idx(np.zeros((0, 28, 28), np.uint8)))
    (path / FILES[("test", "labels")]).write_bytes(encode_idx(np.zeros(0, np.uint8)))
    with pytest.raises(ValueError, match=r"test images \(0, 28, 28\) .* are not N >= 1"):
        load_images(path, "test")


# ------------------------------------------------------------------------ loader arguments

LOADER_CASES = {
    "token batch 0": (lambda t: TokenLoader(t, 8, 0), r"batch_size=0 must be an integer >= 1"),
    "token seq_len 0": (lambda t: TokenLoader(t, 0, 2), r"seq_len=0 must be an integer >= 1"),
    "rank beyond world": (
        lambda t: TokenLoader(t, 8, 2, rank=2, world_size=2),
        r"rank=2 must be in \[0, world_size=2\)",
    ),
    "eval max_batches 0": (
        lambda t: list(eval_batches(t, 8, 2, max_batches=0)),
        r"max_batches=0 must be an integer >= 1",
    ),
    "eval batch 0": (lambda t: list(eval_batches(t, 8, 0)), r"batch_size=0 must be an integer"),
    "image batch 0": (
        lambda t: ImageLoader(np.zeros((4, 28, 28), np.uint8), np.zeros(4, np.uint8), 0),
        r"batch_size=0 must be an integer >= 1",
    ),
}


@pytest.mark.parametrize("case", list(LOADER_CASES))
def test_bad_loader_argument_is_refused(case: str) -> None:
    make, match = LOADER_CASES[case]
    with pytest.raises(ValueError, match=match):
        make(np.arange(200, dtype=np.uint16))

