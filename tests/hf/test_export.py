"""``hyperfrac export`` / ``hyperfrac generate`` on a trained run, and remote-code loading in
a fresh interpreter that cannot import hyperfrac."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

pytest.importorskip("transformers")

from hyperfrac.cli import main
from hyperfrac.generate import generate
from hyperfrac.hf import HyperfracForCausalLM
from hyperfrac.hf.export import BUNDLE, bundle_source
from hyperfrac.train import Trainer, load_config

from .helpers import load_without_hyperfrac

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory, tiny_dataset) -> Path:
    out = tmp_path_factory.mktemp("runs")
    cfg = load_config(
        ROOT / "configs" / "tiny.yaml",
        [
            f"data.path={tiny_dataset}",
            f"out_dir={out}",
            "data.seq_len=32",
            "train.steps=3",
            "train.batch_size=4",
            "log.progress=never",
            "eval.interval=0",
            "eval.max_batches=2",
            "model.connection={kind: dhc, n_streams: 2}",
        ],
    )
    trainer = Trainer(cfg)
    trainer.fit()
    return trainer.run_dir


def test_bundle_has_no_hyperfrac_imports() -> None:
    for name in BUNDLE:
        src = bundle_source(name)
        compile(src, name, "exec")
        assert "import hyperfrac" not in src and "from hyperfrac" not in src, name


def test_export_run_loads_as_remote_code_without_hyperfrac(
    tiny_run: Path, tmp_path: Path, capsys
) -> None:
    out = tmp_path / "export"
    assert main(["export", str(tiny_run), str(out)]) == 0
    capsys.readouterr()
    for name in ["config.json", "model.safetensors", "tokenizer.json", *BUNDLE]:
        assert (out / name).is_file(), name
    ours = HyperfracForCausalLM.from_pretrained(out).eval()
    idx = torch.randint(0, 512, (2, 12), generator=torch.Generator().manual_seed(0))
    res = load_without_hyperfrac(out, idx, tmp_path)
    assert res["class"].startswith("transformers_modules")
    with torch.no_grad():
        ref = ours(idx).logits
    torch.testing.assert_close(torch.tensor(res["logits"]), ref, rtol=0, atol=1e-6)
    assert res["generated"] == generate(ours.model, idx, 8, temperature=0).tolist()
    assert isinstance(res["text"], str) and res["text"]
    # `hyperfrac generate` also takes the exported folder (model + tokenizer from the folder)
    assert main(["generate", str(out), "--prompt", "The king", "--max-new-tokens", "6"]) == 0
    assert capsys.readouterr().out.startswith("The king")


def test_generate_cli_on_a_run(tiny_run: Path, capsys) -> None:
    args = ["generate", str(tiny_run), "--prompt", "The king", "--max-new-tokens", "12"]
    assert main(args + ["--seed", "1"]) == 0
    first = capsys.readouterr().out
    assert first.startswith("The king")
    assert main(args + ["--seed", "1", "--no-cache"]) == 0
    assert capsys.readouterr().out == first  # cached and uncached sample the same text


def test_export_errors_clearly_without_checkpoint(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match="no complete checkpoint"):
        main(["--debug", "export", str(tmp_path), str(tmp_path / "out")])
