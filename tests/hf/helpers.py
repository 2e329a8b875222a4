"""Load a model folder as remote code in a fresh interpreter that cannot import hyperfrac."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import torch

# Runs in a fresh interpreter: hyperfrac is made unimportable (it is installed in editable
# mode, so PYTHONPATH alone cannot hide it), then the folder is loaded as remote code.
REMOTE = textwrap.dedent(
    """
    import json, sys
    class _NoHyperfrac:
        def find_spec(self, name, path=None, target=None):
            if name == "hyperfrac" or name.startswith("hyperfrac."):
                raise ModuleNotFoundError("hyperfrac is blocked in this test")
    sys.meta_path.insert(0, _NoHyperfrac())
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer
    folder, ids_path, out_path = sys.argv[1:4]
    model = AutoModelForCausalLM.from_pretrained(folder, trust_remote_code=True).eval()
    assert not any(m.startswith("hyperfrac") for m in sys.modules), "hyperfrac was imported"
    idx = torch.tensor(json.load(open(ids_path)))
    with torch.no_grad():
        logits = model(idx).logits
    gen = model.generate(idx, max_new_tokens=8, do_sample=False, pad_token_id=0)
    res = {"logits": logits.tolist(), "generated": gen.tolist(), "class": type(model).__module__}
    try:
        res["text"] = AutoTokenizer.from_pretrained(folder).decode(gen[0])
    except (OSError, ValueError):  # no tokenizer in the folder
        res["text"] = None
    json.dump(res, open(out_path, "w"))
    """
)


def load_without_hyperfrac(folder: Path, idx: torch.Tensor, tmp: Path) -> dict:
    (tmp / "ids.json").write_text(json.dumps(idx.tolist()))
    (tmp / "remote.py").write_text(REMOTE)
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    env.update(HF_HOME=str(tmp / "hf-home"), HF_HUB_OFFLINE="1", TRANSFORMERS_OFFLINE="1")
    proc = subprocess.run(
        [
            sys.executable,
            "-I",
            str(tmp / "remote.py"),
            str(folder),
            str(tmp / "ids.json"),
            str(tmp / "out.json"),
        ],
        capture_output=True,
        text=True,
        env=env,
        cwd=tmp,
        timeout=300,
    )
    assert proc.returncode == 0, proc.stderr[-4000:]
    return json.loads((tmp / "out.json").read_text())
