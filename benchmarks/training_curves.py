"""The loss curves of a training run, from the history its trainer writes to `<run>/results.json`.

    python benchmarks/training_curves.py outputs/sisc-small                       # -> outputs/sisc-small/training_curves.png
    python benchmarks/training_curves.py outputs/sisc-small --out benchmarks/reports/main_job/training_curves.png

One panel per logged loss (ITC, ITM, MLM, ...). The ITM panel marks chance: the entropy of guessing with one
positive per two negatives (ALBEF's ITM batch: each pair, one hard negative image, one hard negative text), the
loss of a head that has learned only the label prior. Printed: each loss at a few steps (the mean of the logs in a
window around them, as single logs are noisy).
"""

from __future__ import annotations

import argparse
import json
import math
import os

import matplotlib

matplotlib.use("Agg")  # written to a file, never shown
import matplotlib.pyplot as plt  # noqa: E402  (after choosing the backend)

ITM_CHANCE = -(1 / 3 * math.log(1 / 3) + 2 / 3 * math.log(2 / 3))  # 0.6365


def loss_names(history: list[dict]) -> list[str]:
    """The logged losses, total first: "loss" and the "loss_*" keys that every log has."""
    names = [key for key in history[0] if key == "loss" or key.startswith("loss_")]
    return [name for name in names if all(name in entry for entry in history)]


def windowed(history: list[dict], name: str, step: int, window: int) -> float:
    """Mean of `name` over the logs within `window` steps before and at `step` (at least the nearest log)."""
    near = [entry[name] for entry in history if step - window < entry["step"] <= step]
    if not near:
        near = [min(history, key=lambda entry: abs(entry["step"] - step))[name]]
    return sum(near) / len(near)


def main(argv=None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("run", help="a training output folder with results.json")
    parser.add_argument("--out", help="PNG path (default: <run>/training_curves.png)")
    parser.add_argument("--window", type=int, default=50, help="steps averaged for the printed values")
    args = parser.parse_args(argv)
    path = os.path.join(args.run, "results.json")
    if not os.path.isfile(path):
        parser.error(f"{path} not found: pass the output folder of a finished training run")
    with open(path) as handle:
        history = json.load(handle).get("history") or []
    if not history:
        parser.error(f"{path} holds no logged steps (history is empty)")
    names = loss_names(history)
    steps = [entry["step"] for entry in history]
    last = steps[-1]
    marks = sorted({s for s in (args.window, last // 4, last // 2, 3 * last // 4, last) if s > 0})
    print(f"{'loss':<10}" + "".join(f"{'step ' + str(s):>12}" for s in marks))
    table = {}
    for name in names:
        table[name] = {s: windowed(history, name, s, args.window) for s in marks}
        print(f"{name:<10}" + "".join(f"{value:>12.3f}" for value in table[name].values()))
    if "loss_itm" in names:
        print(f"(ITM chance: {ITM_CHANCE:.3f}, one positive per two negatives)")

    fig, axes = plt.subplots(1, len(names), figsize=(4 * len(names), 3.2), squeeze=False)
    for ax, name in zip(axes[0], names):
        ax.plot(steps, [entry[name] for entry in history], lw=1)
        if name == "loss_itm":
            ax.axhline(ITM_CHANCE, color="grey", ls="--", lw=1, label=f"chance {ITM_CHANCE:.3f}")
            ax.legend(loc="upper right", fontsize=8)
        ax.set_title(name)
        ax.set_xlabel("step")
    fig.suptitle(os.path.basename(os.path.normpath(args.run)), fontsize=9)
    fig.tight_layout()
    out = args.out or os.path.join(args.run, "training_curves.png")
    os.makedirs(os.path.dirname(os.path.abspath(out)), exist_ok=True)
    fig.savefig(out, dpi=90)
    plt.close(fig)
    print(f"written: {out}")
    return {"losses": table, "plot": out}


if __name__ == "__main__":
    main()
