"""Fresh Python processes that cannot import this repository: a saved checkpoint must load from its own code."""

import os
import site
import subprocess
import sys

import torch

def python_without_repo(env: dict | None = None) -> tuple[list[str], dict]:
    """(command prefix, environment) of a Python that has the venv's packages but not this repository: `-S` skips
    the site-packages .pth files, which hold the editable install of SISC, and the site-packages folders are given
    on PYTHONPATH instead (where .pth files are not read)."""
    env = {k: v for k, v in (os.environ if env is None else env).items() if k != "PYTHONPATH"}
    env["PYTHONPATH"] = os.pathsep.join(site.getsitepackages())
    return [sys.executable, "-S"], env


SCRIPT = r"""
import sys, torch
import transformers
auto_class = getattr(transformers, sys.argv[1])
model = auto_class.from_pretrained(sys.argv[2], trust_remote_code=True).eval()
assert type(model).__module__.startswith("transformers_modules."), type(model).__module__
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
    python, env = python_without_repo()
    result = subprocess.run([*python, "-c", SCRIPT, auto_class, str(folder), inputs_file], cwd=workdir,
                            capture_output=True, text=True, env=env, timeout=120)
    assert result.returncode == 0, result.stderr[-2000:]
    name, logits = result.stdout.strip().splitlines()[-1].split(" ", 1)
    return name, logits
