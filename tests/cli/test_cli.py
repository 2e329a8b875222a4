"""The command line: one-line errors with exit code 2, --debug tracebacks, shipped configs."""

from __future__ import annotations

from pathlib import Path

import pytest

from hyperfrac.cli import main


def _error_line(capsys) -> str:
    err = capsys.readouterr().err.strip()
    assert "\n" not in err and "Traceback" not in err, err
    return err


@pytest.mark.parametrize(
    "argv, phrase",
    [
        (["train", "no-such-config"], "no run config or file 'no-such-config'"),
        (["train", "tiny", "optim.lr=-1", "--dry-run"], "optim.lr"),
        (["train", "tiny", "model.connection={kind: dhc, n_stream: 2}", "--dry-run"],
         "unknown option 'n_stream' for kind 'dhc' — did you mean 'n_streams'?"),
        (["compare", "no-such-preset", "--dry-run"], "no preset or file 'no-such-preset'"),
        (["compare", "smoke", "--arm", "dhc,n_stream=2", "--dry-run"],
         "unknown option 'n_stream' for kind 'dhc' — did you mean 'n_streams'?"),
        (["compare", "smoke", "--arm", "dhx", "--dry-run"], "did you mean 'dhc'"),
        (["eval", "/no/such/run"], "run folder /no/such/run does not exist"),
        (["config", "show", "nope"], "no run config or file 'nope'"),
    ],
)
def test_errors_are_one_line_with_exit_2(argv, phrase, capsys):
    assert main(argv) == 2
    line = _error_line(capsys)
    assert line.startswith(f"hyperfrac {argv[0]}: error: ") and phrase in line, line


def test_debug_flag_and_env_show_the_traceback(monkeypatch):
    with pytest.raises(FileNotFoundError):
        main(["--debug", "train", "no-such-config"])
    with pytest.raises(FileNotFoundError):  # after the subcommand too
        main(["train", "no-such-config", "--debug"])
    monkeypatch.setenv("HYPERFRAC_DEBUG", "1")
    with pytest.raises(FileNotFoundError):
        main(["train", "no-such-config"])


def test_missing_extra_names_the_pip_command(monkeypatch, capsys):
    import hyperfrac.cli.train as train_cli

    def needs_yaml(args):
        raise ModuleNotFoundError("No module named 'yaml'", name="yaml")

    monkeypatch.setattr(train_cli, "_train", needs_yaml)
    assert main(["train", "tiny"]) == 2
    assert "pip install 'hyperfrac[train]'" in _error_line(capsys)


def test_config_list_show_copy(tmp_path: Path, monkeypatch, capsys):
    assert main(["config", "list"]) == 0
    out = capsys.readouterr().out
    assert "  tiny" in out and "  compare/default" in out
    assert main(["config", "show", "compare/smoke"]) == 0
    assert "extends: small" in capsys.readouterr().out
    monkeypatch.chdir(tmp_path)
    assert main(["config", "copy", "tiny"]) == 0
    capsys.readouterr()
    assert (tmp_path / "tiny.yaml").read_text().startswith(
        (Path(__file__).parents[2] / "configs" / "tiny.yaml").read_text()[:20])
    assert main(["config", "copy", "tiny"]) == 2  # no silent overwrite
    assert "--force" in _error_line(capsys)
    # the copy trains as a file path, and a shipped name works without a path
    assert main(["train", "tiny.yaml", "--dry-run"]) == 0
    assert main(["train", "tiny", "--dry-run"]) == 0


def test_preset_file_by_path_extends_a_shipped_preset(tmp_path: Path, capsys):
    mine = tmp_path / "mine.yaml"
    mine.write_text('extends: default\narms: [residual, "dhc2=dhc,n_streams=2"]\nseeds: [0]\n')
    assert main(["compare", str(mine), "--dry-run"]) == 0
    out = capsys.readouterr().out
    assert "dhc2" in out and "n_layers" in out
