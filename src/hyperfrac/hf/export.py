"""Write HuggingFace model folders: weights, config, tokenizer and the remote-code bundle.

A folder written by :func:`save_hf` loads in two ways:

* with hyperfrac installed: ``import hyperfrac.hf`` registers the ``hyperfrac`` model type
  with ``AutoConfig`` / ``AutoModelForCausalLM``;
* without it: ``AutoModelForCausalLM.from_pretrained(folder, trust_remote_code=True)``. The
  folder carries ``configuration_hyperfrac.py``, ``modeling_hyperfrac.py`` and copies of the
  model's own source files (connections, layers, MoE, LM), with ``hyperfrac.*`` imports
  rewritten to relative ones; ``config.json``'s ``auto_map`` points at the two classes. The
  code that runs is therefore the code that trained the model, fused kernels included.

:func:`export_run` turns a training run (latest checkpoint + its config + its dataset's
tokenizer) into such a folder; it is what ``hyperfrac export RUN_DIR OUT_DIR`` runs.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import hyperfrac

AUTO_MAP = {
    "AutoConfig": "configuration_hyperfrac.HyperfracConfig",
    "AutoModelForCausalLM": "modeling_hyperfrac.HyperfracForCausalLM",
}
# files transformers loads by name (auto_map); they name every other bundled module
AUTO_ENTRY_FILES = ("configuration_hyperfrac.py", "modeling_hyperfrac.py")
# `from <package> import ...` of a package's public names: which bundled module defines them
_PACKAGE_HOME = {"hyperfrac.connections": "registry", "hyperfrac.models": "lm"}
_FROM = re.compile(r"^(?P<indent>\s*)from (?P<mod>hyperfrac(?:\.\w+)*) import (?P<names>.+)$")
# multi-line imports: the first line is enough to know the module
_FROM_ANY = re.compile(r"^\s*from (?P<mod>hyperfrac(?:\.\w+)*) import (?P<names>[^\n]+)$",
                       re.MULTILINE)


def _bundle_files() -> dict[str, str]:
    """Bundled file name -> source file (relative to the package): the closure of the
    ``hyperfrac`` imports of the two entry files, so a new module of the model's code is
    bundled without a list to keep in step. File names must be unique across packages."""
    root = Path(hyperfrac.__file__).parent
    todo = [f"hf/{name}" for name in AUTO_ENTRY_FILES]
    found: dict[str, str] = {}
    while todo:
        rel = todo.pop()
        name = Path(rel).name
        if name in found:
            if found[name] != rel:
                raise RuntimeError(f"remote-code bundle: {rel} and {found[name]} share a name")
            continue
        found[name] = rel
        for m in _FROM_ANY.finditer((root / rel).read_text()):
            parts = m["mod"].split(".")[1:]  # hyperfrac.connections.base -> connections/base
            if m["mod"] in _PACKAGE_HOME:
                sub = re.fullmatch(r"\(?(\w+) as \w+\)?", m["names"].strip())
                stem = sub[1] if sub and (root / parts[0] / f"{sub[1]}.py").is_file() \
                    else _PACKAGE_HOME[m["mod"]]
                parts = [parts[0], stem]
            todo.append("/".join(parts) + ".py")
    return found


BUNDLE: dict[str, str] = _bundle_files()


def _rewrite_line(line: str) -> str:
    m = _FROM.match(line)
    if not m:
        return line
    indent, mod, names = m["indent"], m["mod"], m["names"]
    module = re.fullmatch(r"(\w+) as \w+", names.strip())
    if mod in _PACKAGE_HOME and module and f"{module[1]}.py" in BUNDLE:  # a module of the package
        return f"{indent}from . import {names.strip()}"
    if mod in _PACKAGE_HOME:
        return f"{indent}from .{_PACKAGE_HOME[mod]} import {names}"
    stem = mod.rsplit(".", 1)[-1] + ".py"
    if stem not in BUNDLE:
        raise RuntimeError(
            f"remote-code bundle: {mod} is imported but not bundled; add it to BUNDLE"
        )
    return f"{indent}from .{stem[:-3]} import {names}"


def bundle_source(name: str) -> str:
    """Source of bundled file ``name`` with every ``hyperfrac`` import made relative."""
    root = Path(hyperfrac.__file__).parent
    text = (root / BUNDLE[name]).read_text()
    out = "\n".join(_rewrite_line(line) for line in text.split("\n"))
    if name in AUTO_ENTRY_FILES:
        # transformers copies only the modules an entry file names as `from .x import ...`
        # (not recursively, in some versions): name every bundled module here.
        links = "".join(
            f"from .{m[:-3]} import __name__ as _bundled_{m[:-3]}  # noqa: F401, E402\n"
            for m in BUNDLE
            if m not in AUTO_ENTRY_FILES
        )
        future = "from __future__ import annotations\n"
        if future not in out:
            raise RuntimeError(f"remote-code bundle: {name} lacks `{future.strip()}`")
        out = out.replace(future, future + links, 1)
    if re.search(r"^\s*(from|import) hyperfrac\b", out, flags=re.MULTILINE):
        raise RuntimeError(f"remote-code bundle: {name} still imports hyperfrac")
    return out


def write_remote_code(out_dir: Path) -> list[Path]:
    """Write the remote-code bundle into ``out_dir``; returns the written paths."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    written = []
    for name in BUNDLE:
        (out_dir / name).write_text(bundle_source(name))
        written.append(out_dir / name)
    return written


def save_hf(model, out_dir: Path, *, tokenizer=None, remote_code: bool = True) -> Path:
    """``model.save_pretrained`` (safetensors) + the remote-code bundle + ``tokenizer``.

    ``tokenizer`` is a transformers tokenizer, a path to a ``tokenizer.json`` (hyperfrac's
    byte-level BPE; saved as a fast tokenizer with ``<|endoftext|>`` as EOS and ``<|pad|>`` as
    pad, see :func:`load_bpe_tokenizer`) or None. The tokenizer's bos/eos/pad ids fill those
    the model's config and generation config do not set yet (a converted model keeps its
    source's), so ``generate`` stops at end of text.
    """
    out_dir = Path(out_dir)
    if remote_code:
        model.config.auto_map = dict(AUTO_MAP)
    if tokenizer is not None:
        if isinstance(tokenizer, (str, Path)):
            tokenizer = load_bpe_tokenizer(Path(tokenizer), model.config.vocab_size)
        wire_special_tokens(model, tokenizer)
    model.save_pretrained(out_dir, safe_serialization=True)
    if remote_code:
        write_remote_code(out_dir)
    if tokenizer is not None:
        tokenizer.save_pretrained(out_dir)
    return out_dir


SPECIAL_TOKENS = ("bos_token_id", "eos_token_id", "pad_token_id")
TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "tokenizer.model", "vocab.json")
"""Files of which an HF folder with a tokenizer has at least one (some transformers versions
return an empty placeholder tokenizer for a folder without any)."""


def wire_special_tokens(model, tokenizer) -> None:
    """Copy the tokenizer's bos/eos/pad ids into ``model.config`` and ``model.generation_config``
    where those are unset."""
    gen = getattr(model, "generation_config", None)
    for name in SPECIAL_TOKENS:
        tid = getattr(tokenizer, name, None)
        if tid is None:
            continue
        if tid >= model.config.vocab_size:
            raise ValueError(
                f"tokenizer {name}={tid} lies outside the model's vocab_size="
                f"{model.config.vocab_size}"
            )
        if getattr(model.config, name, None) is None:
            setattr(model.config, name, tid)
        if gen is not None and getattr(gen, name, None) is None:
            setattr(gen, name, tid)


def load_bpe_tokenizer(path: Path, vocab_size: int | None = None):
    """hyperfrac's ``tokenizer.json`` as a transformers fast tokenizer: ``<|endoftext|>`` is
    EOS; the pad token is ``<|pad|>``, a new id after the tokenizer's own when the model's
    ``vocab_size`` has a spare embedding row (never seen in training; pads are masked), else
    EOS. A distinct pad keeps collators that drop pad labels from dropping the EOS labels."""
    from transformers import PreTrainedTokenizerFast

    from hyperfrac.data.tokenizer import EOS, PAD

    tok = PreTrainedTokenizerFast(tokenizer_file=str(path), eos_token=EOS)
    if PAD in tok.get_vocab():
        tok.pad_token = PAD
    elif vocab_size is not None and len(tok) < vocab_size:
        tok.add_special_tokens({"pad_token": PAD})
    else:
        tok.pad_token = EOS
    return tok


def load_lm_run(run_dir: Path, checkpoint: Path | None = None) -> tuple[Any, Any, Path | None]:
    """(TransformerLM with the checkpoint's weights, RunConfig, tokenizer.json or None)."""
    from hyperfrac.models.lm import TransformerLM
    from hyperfrac.runs import load_run

    run = load_run(run_dir, checkpoint, device="cpu")
    if not isinstance(run.model, TransformerLM):
        raise ValueError(f"{run_dir} holds a {type(run.model).__name__}; only language models "
                         "export")
    tok = run.data_path / "tokenizer.json"
    return run.model, run.cfg, tok if tok.is_file() else None


def export_run(
    run_dir: Path, out_dir: Path, *, checkpoint: Path | None = None, tokenizer: Path | None = None
) -> Path:
    """A training run -> HuggingFace model folder (see the module docstring)."""
    from hyperfrac.hf.configuration_hyperfrac import HyperfracConfig
    from hyperfrac.hf.modeling_hyperfrac import HyperfracForCausalLM

    lm, cfg, tok = load_lm_run(run_dir, checkpoint)
    hf = HyperfracForCausalLM(HyperfracConfig.from_lm_config(cfg.model))
    hf.model.load_state_dict(lm.state_dict())
    tokenizer = tokenizer or tok
    if tokenizer is None:
        print(f"[export] no tokenizer.json found for {run_dir}; exporting the model only")
    return save_hf(hf, out_dir, tokenizer=tokenizer)
