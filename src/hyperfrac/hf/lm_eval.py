"""lm-evaluation-harness on a hyperfrac model: ``hyperfrac eval RUN_DIR --lm-eval TASKS``.

The model is wrapped as ``HyperfracForCausalLM`` and handed to lm-eval's ``HFLM`` as an
instance (``HFLM(pretrained=model, tokenizer=...)``), then ``lm_eval.simple_evaluate`` runs
the tasks. ``RUN_DIR`` is a training run (latest checkpoint + the dataset's tokenizer) or a
folder written by ``hyperfrac export`` / ``convert``.

Hub tasks (``hellaswag``, ``arc_easy``, ...) download their data sets and so need the network.
Offline, point ``--lm-eval-include`` at a folder of task YAMLs over local files, e.g. a JSONL
multiple-choice task (see docs/huggingface.md)::

    task: my_mc
    dataset_path: json
    dataset_kwargs: {data_files: {test: /abs/path/items.jsonl}}
    test_split: test
    output_type: multiple_choice
    doc_to_text: "{{context}}"
    doc_to_choice: "{{choices}}"
    doc_to_target: "{{label}}"
    metric_list: [{metric: acc}]

Needs ``pip install lm-eval`` (0.4.13 tested; it leaves torch alone). Loglikelihood tasks work;
``generate_until`` tasks batch with left padding, which hyperfrac models refuse, so run them
with ``--batch-size 1``.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any


def load_for_eval(path: Path, checkpoint: Path | None = None):
    """(HyperfracForCausalLM, transformers tokenizer) from a run folder or an HF folder."""
    from transformers import AutoTokenizer

    from hyperfrac.hf.configuration_hyperfrac import HyperfracConfig
    from hyperfrac.hf.export import TOKENIZER_FILES, load_bpe_tokenizer, load_lm_run
    from hyperfrac.hf.modeling_hyperfrac import HyperfracForCausalLM

    path = Path(path)
    if (path / "config.json").is_file():
        if not any((path / f).is_file() for f in TOKENIZER_FILES):
            raise FileNotFoundError(
                f"{path} has no tokenizer (none of {', '.join(TOKENIZER_FILES)}); copy the "
                "source model's tokenizer files into it, or convert from a folder that has them"
            )
        return HyperfracForCausalLM.from_pretrained(path), AutoTokenizer.from_pretrained(path)
    lm, cfg, tok = load_lm_run(path, checkpoint)
    if tok is None:
        raise FileNotFoundError(f"no tokenizer.json for {path}; lm-eval needs the tokenizer")
    model = HyperfracForCausalLM(HyperfracConfig.from_lm_config(cfg.model))
    model.model.load_state_dict(lm.state_dict())
    return model, load_bpe_tokenizer(tok)


def run_lm_eval(
    model,
    tokenizer,
    tasks: list[str],
    *,
    include_path: Path | None = None,
    limit: int | None = None,
    batch_size: int = 1,
    num_fewshot: int | None = None,
) -> dict[str, Any]:
    """``lm_eval.simple_evaluate`` on a ``HyperfracForCausalLM``; returns its ``results``."""
    try:
        from lm_eval import simple_evaluate
        from lm_eval.models.huggingface import HFLM
        from lm_eval.tasks import TaskManager
    except ImportError as e:
        raise ImportError("--lm-eval needs lm-evaluation-harness: pip install lm-eval") from e

    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    lm = HFLM(
        pretrained=model.eval(),
        tokenizer=tokenizer,
        batch_size=batch_size,
        max_length=model.config.max_seq_len,
    )
    manager = TaskManager(include_path=str(include_path) if include_path else None)
    out = simple_evaluate(
        model=lm,
        tasks=tasks,
        task_manager=manager,
        limit=limit,
        num_fewshot=num_fewshot,
        log_samples=False,
        bootstrap_iters=0,
    )
    return out["results"]


def evaluate_run_lm_eval(
    run_dir: Path,
    tasks: list[str],
    *,
    checkpoint: Path | None = None,
    include_path: Path | None = None,
    limit: int | None = None,
    batch_size: int = 1,
) -> dict[str, Any]:
    """lm-eval ``tasks`` on a run folder (or an HF folder); writes ``RUN/lm_eval.json`` for a
    run folder. What ``hyperfrac eval RUN --lm-eval TASKS`` runs."""
    if not tasks:
        raise ValueError("--lm-eval needs at least one task name")
    model, tok = load_for_eval(run_dir, checkpoint)
    res = run_lm_eval(model, tok, tasks, include_path=include_path, limit=limit,
                      batch_size=batch_size)
    if (Path(run_dir) / "checkpoints").is_dir():
        (Path(run_dir) / "lm_eval.json").write_text(json.dumps(res, indent=2, default=str) + "\n")
    return res
