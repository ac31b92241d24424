"""Training-speed benchmark of SISC: what the regulated loss (SRCL) and the frozen teacher cost per training step.

    python benchmarks/train_speed.py                      # defaults: small model, image 64, batch 64, CPU
    python benchmarks/train_speed.py --device cuda --batch_size 256 --rounds 50

Measured side by side in one run, on one model size and one fixed synthetic batch:

1. a full training step of `SiscForPreTraining` (forward of ITC + ITM + MLM, backward, gradient clipping, AdamW
   step) with `contrastive_loss="srcl"` and with `"infonce"`. Both run on the SAME model object: the loss reads
   `config.contrastive_loss` at forward time, so only that field is toggled between steps;
2. SRCL with a frozen teacher (a second `SiscModel` of the same size, eval mode, no gradients), run online on the
   batch every step, against the same teacher's embeddings computed once beforehand and passed in (the cache);
3. samples per second of every variant;
4. the ITC loss alone on the (global-batch) logits: regulated (`mixed_similarity` -> `regulation_weights` in both
   directions -> `regulated_contrastive_loss`) against plain `regulated_contrastive_loss(logits)`, forward +
   backward, since its difference is small next to the encoders.

Method: warm-up rounds are run and discarded; then each of R rounds runs every variant once, in a rotating order
(round r starts at variant r mod V), so drifts in machine speed hit all variants alike. Every step of round r
starts from the same RNG seed (same MLM masking and hard-negative draws for every variant). Reported per variant:
median and inter-quartile range over rounds; ratios are ratios of medians (the median of the per-round ratios is
given beside them), with 95% bootstrap intervals over rounds. Garbage is collected before each timed region and
the collector is off inside it (as `timeit` does). On CUDA the device is synchronised before and after each timed
region. The thread count is left at torch's default and printed. The ITC-loss-alone difference also gives the
step ratio it predicts (the rest of the step is the same for both losses), a check on the noisier step ratio.
All numbers go to `--output` (JSON).

Noise: torch uses as many threads as cores by default, so on a small machine any other busy process slows every
step several-fold (one busy core made a 2-core run ~12x slower). The run prints the share of the CPU that other
processes used during the measured rounds; trust numbers from runs where it is near 0%.

The synthetic batch has the shape of the real data (token ids from the shipped vocabulary's range with [CLS] /
[SEP] / padding, images of the model's size, one image id per pair); speed does not depend on the content.
"""

from __future__ import annotations

import argparse
import gc
import json
import math
import os
import platform
import random
import resource
import statistics
import sys
import time

import torch
import transformers

from configuration_sisc import PLAIN_IMAGE_TOWER, SiscConfig
from modeling_sisc import (
    SiscForPreTraining,
    SiscModel,
    mixed_similarity,
    regulated_contrastive_loss,
    regulation_weights,
)

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))  # where results are written

VOCAB_SIZE = 709  # size of the shipped vocabulary (sisc_vocab.txt): [PAD]=0, [UNK]=1, [CLS]=2, [SEP]=3, [MASK]=4
PAD_ID, FIRST_WORD_ID = 0, 5  # [PAD]; the first id after the special tokens
GOAL_SRCL_OVER_INFONCE = 1.03

# (name, contrastive_loss, teacher mode)
STEP_VARIANTS = (
    ("infonce", "infonce", None),
    ("srcl", "srcl", None),
    ("srcl+online_teacher", "srcl", "online"),
    ("srcl+cached_teacher", "srcl", "cached"),
)
LOSS_VARIANTS = ("itc_plain", "itc_regulated")


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--batch_size", type=int, default=64, help="pairs per step (also the ITC logits' size)")
    parser.add_argument("--image_size", type=int, default=64, help="image side of the small model (patch 8)")
    parser.add_argument("--hidden_size", type=int, default=128, help="hidden size of the small model")
    parser.add_argument("--seq_len", type=int, default=32, help="padded caption length (the processor's default)")
    parser.add_argument("--rounds", type=int, default=20, help="measured rounds (each runs every variant once)")
    parser.add_argument("--warmup", type=int, default=5, help="discarded warm-up rounds")
    parser.add_argument("--loss_repeats", type=int, default=50, help="ITC-loss-only calls timed together per round")
    parser.add_argument("--alpha", type=float, default=0.5, help="teacher share of the mixed similarity")
    parser.add_argument("--lr", type=float, default=1e-4, help="AdamW learning rate (speed does not depend on it)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--bootstrap", type=int, default=2000, help="resamples of the rounds for the ratios' 95%% CIs")
    parser.add_argument("--device", choices=("cpu", "cuda"), default="cpu")
    parser.add_argument("--output", default=os.path.join(ROOT, "benchmarks", "results", "train_speed.json"))
    args = parser.parse_args(argv)
    if args.device == "cuda" and not torch.cuda.is_available():
        parser.error("--device cuda but torch.cuda.is_available() is False")
    for name in ("batch_size", "image_size", "hidden_size", "rounds", "loss_repeats"):
        if getattr(args, name) < 1:
            parser.error(f"--{name} must be >= 1")
    if args.warmup < 0:
        parser.error("--warmup must be >= 0")
    if args.seq_len < 3:
        parser.error("--seq_len must be >= 3 ([CLS] word [SEP])")
    if not 0.0 <= args.alpha <= 1.0:
        parser.error("--alpha must lie in [0, 1]")
    return args


# ----------------------------------------------------------------------------------------------------------------
# Building blocks
# ----------------------------------------------------------------------------------------------------------------


def small_config(args, contrastive_loss: str) -> SiscConfig:
    return SiscConfig.small(
        **PLAIN_IMAGE_TOWER,  # the small model its committed tables measured (README, "Training speed")
        vocab_size=VOCAB_SIZE,
        image_size=args.image_size,
        hidden_size=args.hidden_size,
        contrastive_loss=contrastive_loss,
        alpha_schedule="constant",
        alpha_start=args.alpha,
    )


def synthetic_batch(config: SiscConfig, batch: int, length: int, seed: int, device: torch.device) -> dict:
    """A fixed batch shaped like the collator's output: captions of random length (half to all of `length` tokens,
    token ids from the config's vocabulary with its [CLS] / [SEP]), right-padded; one image per pair."""
    generator = torch.Generator().manual_seed(seed + 12345)
    lengths = torch.randint(max(3, length // 2), length + 1, (batch,), generator=generator)
    input_ids = torch.randint(FIRST_WORD_ID, config.text_config.vocab_size, (batch, length), generator=generator)
    attention_mask = (torch.arange(length).unsqueeze(0) < lengths.unsqueeze(1)).long()
    input_ids[:, 0] = config.cls_token_id
    input_ids[torch.arange(batch), lengths - 1] = config.sep_token_id
    input_ids[attention_mask == 0] = PAD_ID
    size = config.vision_config.image_size
    pixel_values = torch.randn(batch, 3, size, size, generator=generator).clamp(-1, 1)
    return {
        "input_ids": input_ids.to(device),
        "attention_mask": attention_mask.to(device),
        "pixel_values": pixel_values.to(device),
        "image_ids": torch.arange(batch).to(device),  # one image per pair, as with shuffled rows of distinct images
    }


def count_parameters(model: torch.nn.Module) -> int:
    # named_parameters() yields each (tied) parameter once
    return sum(p.numel() for _, p in model.named_parameters())


def synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def summarize(values: list[float]) -> dict[str, float]:
    """median, quartiles, IQR, mean, min, max of a list of seconds."""
    ordered = sorted(values)
    if len(ordered) >= 2:
        q1, _, q3 = statistics.quantiles(ordered, n=4, method="inclusive")
    else:
        q1 = q3 = ordered[0]
    return {
        "median": statistics.median(ordered),
        "q1": q1,
        "q3": q3,
        "iqr": q3 - q1,
        "mean": statistics.fmean(ordered),
        "min": ordered[0],
        "max": ordered[-1],
    }


def paired_ratio(numerator: list[float], denominator: list[float]) -> float:
    """Median over rounds of the per-round ratio (robust to slow drifts of machine speed)."""
    return statistics.median(a / b for a, b in zip(numerator, denominator))


def bootstrap_ci(numerator: list[float], denominator: list[float], resamples: int, seed: int) -> tuple[float, float]:
    """95% percentile-bootstrap interval of the ratio of medians, resampling whole rounds (pairs stay together)."""
    if resamples < 1 or len(numerator) < 2:
        ratio = statistics.median(numerator) / statistics.median(denominator)
        return ratio, ratio
    rng = random.Random(seed)
    n = len(numerator)
    ratios = []
    for _ in range(resamples):
        picks = [rng.randrange(n) for _ in range(n)]
        ratios.append(statistics.median(numerator[i] for i in picks) / statistics.median(denominator[i] for i in picks))
    ratios.sort()
    return ratios[int(0.025 * (resamples - 1))], ratios[math.ceil(0.975 * (resamples - 1))]


class ContentionMeter:
    """CPU time that OTHER processes used during a stretch of wall time, as a share of all cores (Linux only).

    System-wide busy time from /proc/stat minus this process's own CPU time and that of its finished children (e.g.
    DataLoader workers, once joined). Machine noise the benchmark cannot remove; printed so a reader can judge a run
    (a shared machine running other jobs shows tens of percent).
    """

    def __init__(self):
        self.start = self._sample()

    @staticmethod
    def _sample():
        try:
            with open("/proc/stat") as f:
                fields = [int(x) for x in f.readline().split()[1:]]
            ticks = os.sysconf("SC_CLK_TCK")
        except (OSError, ValueError):
            return None
        idle = fields[3] + (fields[4] if len(fields) > 4 else 0)  # idle + iowait
        busy = sum(fields[:8]) - idle  # user nice system idle iowait irq softirq steal
        children = resource.getrusage(resource.RUSAGE_CHILDREN)
        return busy / ticks, time.process_time() + children.ru_utime + children.ru_stime, time.perf_counter()

    def others_share(self) -> float | None:
        end = self._sample()
        if self.start is None or end is None:
            return None
        busy, own, wall = (b - a for a, b in zip(self.start, end))
        return max(0.0, (busy - own) / (wall * (os.cpu_count() or 1)))


class PeakMemory:
    """Peak memory above the level at entry, of this process, while the `with` block runs.

    CUDA: `torch.cuda.max_memory_allocated`. CPU: the resident set size, sampled by a thread every `interval`
    seconds from /proc/self/statm (Linux; None elsewhere), above the level at entry after glibc was asked to give
    its free memory back (`malloc_trim`): memory that earlier work freed but the allocator kept would otherwise hide
    the new work's growth. Within the block, freed memory the allocator keeps and reuses counts once; fragmentation
    can only add to the number, so on the CPU it is an upper bound of the live tensors' peak (close to it for large
    tensors, which glibc maps and unmaps directly).
    """

    def __init__(self, device: torch.device, interval: float = 0.0005):
        self.device, self.interval = device, interval
        self.peak_bytes: int | None = None

    @staticmethod
    def _resident() -> int | None:
        try:
            with open("/proc/self/statm") as f:
                return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
        except (OSError, ValueError, IndexError):
            return None

    def __enter__(self):
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
            torch.cuda.reset_peak_memory_stats(self.device)
            self.start = torch.cuda.memory_allocated(self.device)
            return self
        import threading

        gc.collect()
        try:
            import ctypes

            ctypes.CDLL("libc.so.6").malloc_trim(0)
        except (OSError, AttributeError):  # not glibc: the level at entry may include cached free memory
            pass
        self.start = self._resident()
        self.highest = self.start
        self.stop = threading.Event()

        def sample():
            while not self.stop.is_set():
                current = self._resident()
                if current is not None and current > self.highest:
                    self.highest = current
                time.sleep(self.interval)

        self.thread = threading.Thread(target=sample, daemon=True)
        if self.start is not None:
            self.thread.start()
        return self

    def __exit__(self, *exc):
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
            self.peak_bytes = torch.cuda.max_memory_allocated(self.device) - self.start
            return
        if self.start is None:
            return
        self.stop.set()
        self.thread.join()
        current = self._resident()
        self.peak_bytes = max(self.highest, current or 0) - self.start


def write_results(results: dict, path: str) -> None:
    """A benchmark's results as JSON at `path` (its folder created)."""
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    with open(path, "w") as f:
        json.dump(results, f, indent=2)
    print(f"results written to {os.path.relpath(os.path.abspath(path))}")


def timed_region():
    """Collect garbage before a timed region and keep the collector off inside it (as timeit does)."""

    class _Region:
        def __enter__(self):
            gc.collect()
            self.was_enabled = gc.isenabled()
            gc.disable()

        def __exit__(self, *exc):
            if self.was_enabled:
                gc.enable()

    return _Region()


# ----------------------------------------------------------------------------------------------------------------
# Timed work
# ----------------------------------------------------------------------------------------------------------------


class StepBench:
    """The student (one SiscForPreTraining, its loss toggled per step), its optimizer, the teacher and its cache."""

    def __init__(self, args, device: torch.device):
        self.args, self.device = args, device
        torch.manual_seed(args.seed)
        self.model = SiscForPreTraining(small_config(args, "srcl")).to(device).train()
        if self.model.sisc.config is not self.model.config:
            raise RuntimeError("SiscForPreTraining and its SiscModel do not share one config; toggling would not work")
        torch.manual_seed(args.seed + 1)
        self.teacher = SiscModel(small_config(args, "infonce")).to(device).eval().requires_grad_(False)
        self.optimizer = torch.optim.AdamW(self.model.parameters(), lr=args.lr, weight_decay=0.01)
        self.batch = synthetic_batch(self.model.config, args.batch_size, args.seq_len, args.seed, device)
        with torch.no_grad():
            self.cache = self.teacher_embeddings()
        synchronize(device)

    def teacher_embeddings(self) -> dict[str, torch.Tensor]:
        batch = self.batch
        return {
            "teacher_image_embeds": self.teacher.get_image_features(batch["pixel_values"]),
            "teacher_text_embeds": self.teacher.get_text_features(batch["input_ids"], batch["attention_mask"]),
        }

    def step(self, contrastive_loss: str, teacher_mode: str | None, seed: int) -> dict[str, float]:
        """One training step; returns its wall time (and the online teacher's part of it) in seconds."""
        model, batch, device = self.model, self.batch, self.device
        model.config.contrastive_loss = contrastive_loss
        torch.manual_seed(seed)  # same MLM masking / hard-negative draws for every variant of a round
        synchronize(device)
        start = time.perf_counter()
        teacher_seconds = 0.0
        extra = {}
        if teacher_mode == "online":
            with torch.no_grad():
                extra = self.teacher_embeddings()
            synchronize(device)
            teacher_seconds = time.perf_counter() - start
        elif teacher_mode == "cached":
            extra = dict(self.cache)
        if extra:
            extra["alpha"] = self.args.alpha
        outputs = model(
            input_ids=batch["input_ids"],
            pixel_values=batch["pixel_values"],
            attention_mask=batch["attention_mask"],
            image_ids=batch["image_ids"],
            **extra,
        )
        outputs.loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        self.optimizer.step()
        self.optimizer.zero_grad(set_to_none=True)
        synchronize(device)
        seconds = time.perf_counter() - start
        loss = outputs.loss.item()  # after the timer: a host sync on CUDA
        if not math.isfinite(loss):
            raise RuntimeError(f"non-finite loss {loss} in variant {contrastive_loss}/{teacher_mode}")
        return {"step": seconds, "teacher": teacher_seconds, "loss": loss}


class LossBench:
    """The ITC loss alone on fixed (batch x batch) logits, forward + backward, timed over `repeats` calls."""

    def __init__(self, args, device: torch.device):
        self.args, self.device = args, device
        generator = torch.Generator().manual_seed(args.seed + 7)
        n, dim = args.batch_size, 64

        def cosine(a, b):
            a = torch.nn.functional.normalize(a, dim=-1)
            b = torch.nn.functional.normalize(b, dim=-1)
            return (a @ b.t()).to(device)

        self.student_cos = cosine(torch.randn(n, dim, generator=generator), torch.randn(n, dim, generator=generator))
        self.teacher_cos = cosine(torch.randn(n, dim, generator=generator), torch.randn(n, dim, generator=generator))
        self.scale = torch.tensor(1.0 / 0.07, device=device)

    def run(self, regulated: bool) -> float:
        """Seconds per call (forward + backward to the cosine matrix)."""
        repeats, device = self.args.loss_repeats, self.device
        synchronize(device)
        start = time.perf_counter()
        for _ in range(repeats):
            cos = self.student_cos.detach().requires_grad_(True)
            logits = self.scale * cos
            if regulated:
                similarity = mixed_similarity(cos, self.teacher_cos, self.args.alpha)
                weights_t2i = regulation_weights(similarity)
                weights_i2t = regulation_weights(similarity.t())
                loss = regulated_contrastive_loss(logits, weights_t2i, weights_i2t)
            else:
                loss = regulated_contrastive_loss(logits)
            loss.backward()
        synchronize(device)
        return (time.perf_counter() - start) / repeats


# ----------------------------------------------------------------------------------------------------------------
# Main
# ----------------------------------------------------------------------------------------------------------------


def rotated(items, offset: int):
    offset %= len(items)
    return list(items[offset:]) + list(items[:offset])


def main(argv=None) -> dict:
    args = parse_args(argv)
    device = torch.device(args.device)
    environment = {
        "torch": torch.__version__,
        "transformers": transformers.__version__,
        "python": platform.python_version(),
        "platform": platform.platform(),
        "device": args.device,
        "device_name": torch.cuda.get_device_name(device) if device.type == "cuda" else platform.processor() or "cpu",
        "num_threads": torch.get_num_threads(),
        "cpu_count": os.cpu_count(),
    }
    print(
        f"torch {environment['torch']} | transformers {environment['transformers']} | device {args.device} "
        f"({environment['device_name']}) | torch threads {environment['num_threads']} (default, cpu_count "
        f"{environment['cpu_count']})"
    )

    bench = StepBench(args, device)
    loss_bench = LossBench(args, device)
    student_params = count_parameters(bench.model)
    teacher_params = count_parameters(bench.teacher)
    print(
        f"model: SiscConfig.small(vocab_size={VOCAB_SIZE}, image_size={args.image_size}, hidden_size={args.hidden_size})"
        f" | SiscForPreTraining {student_params:,} parameters | teacher SiscModel {teacher_params:,} parameters"
    )
    print(
        f"batch {args.batch_size} pairs, captions {args.seq_len} tokens, alpha {args.alpha} | "
        f"{args.warmup} warm-up + {args.rounds} measured rounds, variants rotated per round | "
        f"ITC loss alone: {args.loss_repeats} calls per round"
    )

    step_times = {name: [] for name, _, _ in STEP_VARIANTS}
    teacher_times = []
    losses = {name: [] for name, _, _ in STEP_VARIANTS}
    loss_times = {name: [] for name in LOSS_VARIANTS}
    load_before = os.getloadavg()
    started = time.perf_counter()
    meter = None
    for round_index in range(args.warmup + args.rounds):
        measured = round_index >= args.warmup
        if round_index == args.warmup:
            meter = ContentionMeter()
        seed = args.seed * 100003 + round_index
        for name, contrastive_loss, teacher_mode in rotated(STEP_VARIANTS, round_index):
            with timed_region():
                result = bench.step(contrastive_loss, teacher_mode, seed)
            if measured:
                step_times[name].append(result["step"])
                losses[name].append(result["loss"])
                if teacher_mode == "online":
                    teacher_times.append(result["teacher"])
        for name in rotated(LOSS_VARIANTS, round_index):
            with timed_region():
                seconds = loss_bench.run(regulated=name == "itc_regulated")
            if measured:
                loss_times[name].append(seconds)
        if round_index + 1 == args.warmup:
            print(f"warm-up done ({time.perf_counter() - started:.1f} s)")
    elapsed = time.perf_counter() - started
    load_after = os.getloadavg()
    others_share = meter.others_share() if meter is not None else None
    bench.model.config.contrastive_loss = "srcl"

    # ---- statistics ----
    steps = {name: summarize(times) for name, times in step_times.items()}
    for name, stats in steps.items():
        stats["samples_per_s"] = args.batch_size / stats["median"]
        stats["final_loss"] = losses[name][-1]
    teacher_stats = summarize(teacher_times)
    itc = {name: summarize(times) for name, times in loss_times.items()}

    def ratio(a, b):
        low, high = bootstrap_ci(step_times[a], step_times[b], args.bootstrap, args.seed)
        return {
            "ratio_of_medians": steps[a]["median"] / steps[b]["median"],
            "ci95": [low, high],
            "median_paired_ratio": paired_ratio(step_times[a], step_times[b]),
        }

    srcl_vs_infonce = ratio("srcl", "infonce")
    online_vs_cached = ratio("srcl+online_teacher", "srcl+cached_teacher")
    cached_vs_srcl = ratio("srcl+cached_teacher", "srcl")
    cached_vs_infonce = ratio("srcl+cached_teacher", "infonce")
    online_median = steps["srcl+online_teacher"]["median"]
    cached_median = steps["srcl+cached_teacher"]["median"]
    teacher_share = {
        # the online teacher's forward, timed inside the online steps
        "teacher_forward_share_of_online_step": teacher_stats["median"] / online_median,
        # what the cache saves, from the two step medians
        "saved_by_cache_share_of_online_step": (online_median - cached_median) / online_median,
        # how much of the teacher's forward the cache removes (1.0 = all of it)
        "cache_removes_fraction_of_teacher_cost": (online_median - cached_median) / teacher_stats["median"],
    }
    itc_ratio = {
        "ratio_of_medians": itc["itc_regulated"]["median"] / itc["itc_plain"]["median"],
        "ci95": list(bootstrap_ci(loss_times["itc_regulated"], loss_times["itc_plain"], args.bootstrap, args.seed)),
        "median_paired_ratio": paired_ratio(loss_times["itc_regulated"], loss_times["itc_plain"]),
        "extra_ms_per_call": 1e3 * (itc["itc_regulated"]["median"] - itc["itc_plain"]["median"]),
        "extra_share_of_srcl_step": (itc["itc_regulated"]["median"] - itc["itc_plain"]["median"])
        / steps["srcl"]["median"],
    }
    # the step overhead the ITC loss alone predicts: the rest of the step is identical for both losses
    predicted_srcl_over_infonce = 1.0 + 1e-3 * itc_ratio["extra_ms_per_call"] / steps["infonce"]["median"]
    goal_met = srcl_vs_infonce["ratio_of_medians"] <= GOAL_SRCL_OVER_INFONCE
    low, high = srcl_vs_infonce["ci95"]
    if high <= GOAL_SRCL_OVER_INFONCE:
        verdict = "MET (whole 95% CI below the goal)"
    elif low > GOAL_SRCL_OVER_INFONCE:
        verdict = "NOT MET (whole 95% CI above the goal)"
    else:
        verdict = (
            f"{'met' if goal_met else 'not met'} by the medians, but the 95% CI straddles {GOAL_SRCL_OVER_INFONCE:.2f}x: "
            "machine noise exceeds the difference; use more --rounds"
        )

    # ---- table ----
    ms = 1e3

    def quartiles(stats, digits):
        return f"{ms * stats['q1']:.{digits}f}-{ms * stats['q3']:.{digits}f}"

    def fmt_ratio(r, digits=3):
        low, high = r["ci95"]
        return (
            f"{r['ratio_of_medians']:.{digits}f}x ({low:.{digits}f}-{high:.{digits}f}) "
            f"[{r['median_paired_ratio']:.{digits}f}x]"
        )

    lines = [
        "",
        f"Training step (forward + backward + clip + AdamW), batch {args.batch_size}, {args.rounds} rounds, device {args.device}",
        f"{'variant':<22} {'median ms':>10} {'IQR ms':>8} {'q1-q3 ms':>17} {'samples/s':>10} {'vs infonce':>11}",
    ]
    for name, _, _ in STEP_VARIANTS:
        s = steps[name]
        lines.append(
            f"{name:<22} {ms * s['median']:>10.1f} {ms * s['iqr']:>8.1f} "
            f"{quartiles(s, 1):>17} {s['samples_per_s']:>10.1f} "
            f"{s['median'] / steps['infonce']['median']:>10.3f}x"
        )
    lines.append(
        f"{'  teacher fwd (online)':<22} {ms * teacher_stats['median']:>10.1f} {ms * teacher_stats['iqr']:>8.1f} "
        f"{quartiles(teacher_stats, 1):>17}"
    )
    lines += [
        "",
        f"ITC loss alone (fwd + bwd on {args.batch_size}x{args.batch_size} logits), per call",
        f"{'variant':<22} {'median ms':>10} {'IQR ms':>8} {'q1-q3 ms':>17}",
    ]
    for name in LOSS_VARIANTS:
        s = itc[name]
        lines.append(f"{name:<22} {ms * s['median']:>10.3f} {ms * s['iqr']:>8.3f} {quartiles(s, 3):>17}")
    lines += [
        "",
        "Ratios: ratio of medians (bootstrap 95% CI over rounds) [median of per-round ratios]",
        f"  SRCL / InfoNCE step:                   {fmt_ratio(srcl_vs_infonce)}",
        f"    goal <= {GOAL_SRCL_OVER_INFONCE:.2f}x: {verdict}",
        f"    predicted from the ITC loss alone:   {predicted_srcl_over_infonce:.4f}x",
        f"  online teacher / cached teacher step:  {fmt_ratio(online_vs_cached)}",
        f"  cached teacher / SRCL (no teacher):    {fmt_ratio(cached_vs_srcl)}",
        f"  cached teacher / InfoNCE:              {fmt_ratio(cached_vs_infonce)}",
        f"  teacher forward share of online step:  {100 * teacher_share['teacher_forward_share_of_online_step']:.1f}%",
        f"  step time saved by the cache:          {100 * teacher_share['saved_by_cache_share_of_online_step']:.1f}% "
        f"of the online step ({100 * teacher_share['cache_removes_fraction_of_teacher_cost']:.0f}% of the teacher's cost)",
        f"  ITC regulated / plain (loss alone):    {fmt_ratio(itc_ratio, 2)}",
        f"    +{itc_ratio['extra_ms_per_call']:.3f} ms per call = {100 * itc_ratio['extra_share_of_srcl_step']:.2f}% "
        "of the SRCL step",
        f"measured in {elapsed:.1f} s (warm-up included); load average before/after: "
        f"{load_before[0]:.2f} / {load_after[0]:.2f} (1 min)",
        "other processes used "
        + ("n/a" if others_share is None else f"{100 * others_share:.1f}%")
        + " of the machine's CPU during the measured rounds (0% = quiet machine)",
    ]
    print("\n".join(lines))

    results = {
        "command": " ".join(["python benchmarks/train_speed.py", *(sys.argv[1:] if argv is None else argv)]),
        "environment": environment,
        "settings": {k: v for k, v in vars(args).items() if k != "output"},
        "model": {
            "config": f"SiscConfig.small(vocab_size={VOCAB_SIZE}, image_size={args.image_size}, hidden_size={args.hidden_size})",
            "student_parameters": student_params,
            "teacher_parameters": teacher_params,
        },
        "units": "seconds (samples_per_s: pairs per second at the median step time)",
        "step": steps,
        "online_teacher_forward": teacher_stats,
        "itc_loss_alone": itc,
        "ratios": {
            "srcl_over_infonce": srcl_vs_infonce,
            "online_teacher_over_cached_teacher": online_vs_cached,
            "cached_teacher_over_srcl": cached_vs_srcl,
            "cached_teacher_over_infonce": cached_vs_infonce,
            "itc_regulated_over_plain": itc_ratio,
        },
        "teacher_cost": teacher_share,
        "goal": {
            "srcl_over_infonce_max": GOAL_SRCL_OVER_INFONCE,
            "met": goal_met,
            "verdict": verdict,
            "predicted_srcl_over_infonce_from_itc_loss": predicted_srcl_over_infonce,
        },
        "load_average_before_after": [list(load_before), list(load_after)],
        "other_processes_cpu_share_during_measurement": others_share,
        "raw": {
            "step": step_times,
            "online_teacher_forward": teacher_times,
            "itc_loss_alone": loss_times,
        },
        "elapsed_s": elapsed,
    }
    write_results(results, args.output)
    return results


if __name__ == "__main__":
    main()
