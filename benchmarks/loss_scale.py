"""Scale of the regulated contrastive loss: time and memory of SRCL against InfoNCE over a global batch of N pairs.

    python benchmarks/loss_scale.py                              # N = 256, 1024, 4096, 8192 on the CPU
    python benchmarks/loss_scale.py --device cuda --sizes 1024 8192 32768

What 8 to 32 GPUs gather is one (N x N) similarity matrix per step. This runs the model's own ITC path,
`SiscModel.contrastive_loss` (cosines, same-image mask, regulation weights in both directions, the weighted
softmax cross-entropy), forward and backward from N image and N text embeddings (256-d, as the paper's model), for

- `infonce`: the plain loss (with the same-image mask, as in training);
- `srcl`: weights from the student's own similarities (the main job's default);
- `srcl+teacher`: weights from the student's and a frozen teacher's similarities mixed (alpha 0.5).

Per N and variant: the median time over interleaved rounds and the peak memory above the inputs (`PeakMemory` of
train_speed.py: CUDA's allocator peak, or the CPU's sampled resident size), and that peak in units of one N x N
float32 matrix. Results go to `--output` (JSON) and a table.
"""

from __future__ import annotations

import argparse
import os
import platform
import sys
import time

import torch

from configuration_sisc import SiscConfig
from modeling_sisc import SiscModel
from train_speed import (  # same folder
    ContentionMeter, PeakMemory, rotated, summarize, synchronize, timed_region, write_results,
)

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
VARIANTS = ("infonce", "srcl", "srcl+teacher")
EMBED_DIM = 256


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--sizes", type=int, nargs="+", default=[256, 1024, 4096, 8192], help="global batch sizes N")
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--warmup", type=int, default=1)
    parser.add_argument("--alpha", type=float, default=0.5, help="teacher share of the mixed similarity")
    parser.add_argument("--device", choices=("cpu", "cuda"), default="cpu")
    parser.add_argument("--output", default=os.path.join(ROOT, "benchmarks", "results", "loss_scale.json"))
    args = parser.parse_args(argv)
    if args.device == "cuda" and not torch.cuda.is_available():
        parser.error("--device cuda but torch.cuda.is_available() is False")
    if min(args.sizes) < 2:
        parser.error("--sizes must be >= 2")
    if args.rounds < 1 or args.warmup < 0:
        parser.error("--rounds must be >= 1 and --warmup >= 0")
    return args


def embeddings(n: int, seed: int, device: torch.device) -> torch.Tensor:
    generator = torch.Generator().manual_seed(seed)
    return torch.nn.functional.normalize(torch.randn(n, EMBED_DIM, generator=generator), dim=-1).to(device)


class LossBench:
    """One model head (its loss settings toggled per variant) and fixed inputs of size N."""

    def __init__(self, model: SiscModel, n: int, device: torch.device, alpha: float):
        self.model, self.alpha = model, alpha
        self.image = embeddings(n, 1, device)
        self.text = embeddings(n, 2, device)
        self.teacher_image = embeddings(n, 3, device)
        self.teacher_text = embeddings(n, 4, device)
        self.image_ids = torch.arange(n, device=device)

    def run(self, variant: str) -> float:
        """Forward + backward of the ITC loss under `variant`; the loss value."""
        self.model.config.contrastive_loss = "infonce" if variant == "infonce" else "srcl"
        image = self.image.clone().requires_grad_(True)
        text = self.text.clone().requires_grad_(True)
        teacher = ({"teacher_image_embeds": self.teacher_image, "teacher_text_embeds": self.teacher_text, "alpha": self.alpha}
                   if variant == "srcl+teacher" else {})
        loss, _, _ = self.model.contrastive_loss(image, text, image_ids=self.image_ids, **teacher)
        loss.backward()
        return loss.item()


def main(argv=None) -> dict:
    args = parse_args(argv)
    device = torch.device(args.device)
    torch.manual_seed(0)
    # the loss needs only the head's settings and temperature: the smallest model carries them
    model = SiscModel(SiscConfig.small(vocab_size=16, hidden_size=16, image_size=16)).to(device)
    print(f"torch {torch.__version__} | {args.device} | threads {torch.get_num_threads()} | "
          f"{args.warmup} warm-up + {args.rounds} rounds per N, variants rotated")
    meter = ContentionMeter()
    started = time.perf_counter()
    table = {}
    for n in args.sizes:
        bench = LossBench(model, n, device, args.alpha)
        times = {variant: [] for variant in VARIANTS}
        for round_index in range(args.warmup + args.rounds):
            for variant in rotated(list(VARIANTS), round_index):
                synchronize(device)
                with timed_region():
                    start = time.perf_counter()
                    bench.run(variant)
                    synchronize(device)
                    seconds = time.perf_counter() - start
                if round_index >= args.warmup:
                    times[variant].append(seconds)
        memory = {}
        for variant in VARIANTS:  # one at a time, after the timing (the sampler thread would disturb it)
            with timed_region(), PeakMemory(device) as peak:
                bench.run(variant)
            memory[variant] = peak.peak_bytes
        matrix_bytes = 4 * n * n
        table[n] = {variant: {**summarize(times[variant]), "peak_memory_bytes": memory[variant],
                              "peak_memory_in_nxn_float32": None if memory[variant] is None else memory[variant] / matrix_bytes}
                    for variant in VARIANTS}
        for variant in VARIANTS:
            table[n][variant]["time_over_infonce"] = table[n][variant]["median"] / table[n]["infonce"]["median"]
            if memory[variant] is not None and memory["infonce"]:
                table[n][variant]["memory_over_infonce"] = memory[variant] / memory["infonce"]
        print(f"N={n}: " + ", ".join(f"{variant} {1e3 * table[n][variant]['median']:.1f} ms" for variant in VARIANTS))
        del bench
    others = meter.others_share()

    lines = ["", f"ITC loss forward + backward over N pairs ({EMBED_DIM}-d embeddings, same-image mask), {args.device}",
             f"{'N':>6} {'variant':<13} {'median ms':>10} {'vs infonce':>10} {'peak MiB':>9} {'x NxN fp32':>10} {'vs infonce':>10}"]
    for n, row in table.items():
        for variant, stats in row.items():
            peak = stats["peak_memory_bytes"]
            lines.append(f"{n:>6} {variant:<13} {1e3 * stats['median']:>10.2f} {stats['time_over_infonce']:>9.3f}x "
                         + (f"{peak / 2**20:>9.0f} {stats['peak_memory_in_nxn_float32']:>10.1f} "
                            f"{stats.get('memory_over_infonce', float('nan')):>9.2f}x" if peak is not None else f"{'n/a':>9}"))
    lines.append(f"measured in {time.perf_counter() - started:.0f} s; other processes used "
                 + ("n/a" if others is None else f"{100 * others:.1f}%") + " of the machine's CPU (0% = quiet machine)")
    print("\n".join(lines))
    results = {
        "command": " ".join(["python benchmarks/loss_scale.py", *(sys.argv[1:] if argv is None else argv)]),
        "environment": {"torch": torch.__version__, "device": args.device, "platform": platform.platform(),
                        "num_threads": torch.get_num_threads()},
        "settings": {k: v for k, v in vars(args).items() if k != "output"},
        "units": "seconds; bytes above the inputs",
        "by_n": {str(n): row for n, row in table.items()},
        "other_processes_cpu_share": others,
    }
    write_results(results, args.output)
    return results


if __name__ == "__main__":
    main()
