"""Reload a saved task model through a transformers auto class in a fresh Python process (trust_remote_code)."""

import os
import subprocess
import sys

import torch

SCRIPT = r"""
import sys, torch
import transformers
auto_class = getattr(transformers, sys.argv[1])
model = auto_class.from_pretrained(sys.argv[2], trust_remote_code=True).eval()
with torch.no_grad():
    out = model(**torch.load(sys.argv[3]))
print(type(model).__name__, out.logits.tolist())
"""


def logits_in_fresh_process(auto_class: str, folder, inputs: dict, workdir) -> tuple[str, str]:
    """Load `folder` with `transformers.<auto_class>` in a new process started in `workdir` without this checkout
    on PYTHONPATH (so the model code must come from the folder), run it on `inputs`; returns (the loaded class's
    name, its logits as printed text)."""
    inputs_file = os.path.join(str(workdir), "inputs.pt")
    torch.save(inputs, inputs_file)
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    result = subprocess.run([sys.executable, "-c", SCRIPT, auto_class, str(folder), inputs_file], cwd=workdir,
                            capture_output=True, text=True, env=env, timeout=120)
    assert result.returncode == 0, result.stderr[-2000:]
    name, logits = result.stdout.strip().splitlines()[-1].split(" ", 1)
    return name, logits
