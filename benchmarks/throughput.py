"""Throughput of SISC's pretraining step against what the device can do, and what the trainer adds on top of it.

    python benchmarks/throughput.py                                   # small model, batch 64, CPU, every section
    python benchmarks/throughput.py --config base --batch_size 4 --variants fp32 bf16 --sections peak step
    python benchmarks/throughput.py --device cuda --config base --batch_size 64

Sections (`--sections`), all in one process and one run:

- **peak**: the device's dense-matmul limit, measured here (square matmuls, fp32 and bf16), the yardstick for the
  step's achieved FLOP/s.
- **step**: one pretraining step of `SiscForPreTraining` (ITC + ITM + MLM forward, backward, gradient clipping,
  AdamW) on one fixed synthetic batch, in variants toggled on ONE model and optimizer (`--variants`): `fp32`
  (SDPA attention, the default), `bf16` (autocast), `eager` (attention as plain matmuls), `grad_ckpt` (gradient
  checkpointing), `fused_adamw` (torch's fused AdamW, the trainer's `--fused_adamw`), `compile` (`torch.compile` of
  a copy of the model, never toggled; its compile time is reported apart). Per variant: FLOPs
  per step counted by `torch.utils.flop_counter` on the real step (forward + backward; eager attention, whose
  matmuls the counter sees), time per step, achieved FLOP/s and its share of the measured fp32 / bf16 peak, samples
  per second, memory (below).
- **profile**: `torch.profiler` on the fp32 step: the share of the time of each kind of operation (matmuls,
  attention, normalisation, element-wise, optimizer, ...) and the top operations: what stands between the step and
  the peak.
- **trainer**: the main job's full trainer (`train/pretrain.py`'s task on the shapes data, data loading by its
  DataLoader workers, logging, diagnostics, accelerate) against the raw step (forward, backward, clipping, AdamW,
  scheduler) on the same model and optimizer and on the very batches the trainer drew (recorded in a warm-up run).
  Time per step: the mean over each run's steady-state steps (logging steps included), median over rotated rounds.

Memory: on CUDA the peak allocated memory of the step (`torch.cuda.max_memory_allocated`). On the CPU there is no
allocator peak to read, so the script counts exactly what grows with the batch: the bytes of the tensors autograd
saves for the backward pass (distinct storages, via `saved_tensors_hooks`; parameters left out), per sample, and
per extra sample (batch vs half the batch); plus the weights, gradients and AdamW states (16 bytes per fp32
parameter); and the process's peak resident memory at the end. With gradient checkpointing the inputs of the
checkpointed layers are held by the checkpoint, not as saved tensors, and are not in the count (hidden size x tokens
x layers x 4 bytes per sample).

Timing: warm-up rounds are discarded; each measured round runs every variant once in a rotating order (drifts in
machine speed hit all variants alike). Medians and quartiles over rounds. Garbage is collected before each timed
region and the collector is off inside it. The run reports the share of the CPU that other processes used: trust
runs where it is near 0% (on 2 cores one other busy process makes every step several times slower).
All results go to `--output` (JSON); the tables are printed.
"""

from __future__ import annotations

import argparse
import copy
import math
import os
import platform
import resource
import shlex
import statistics
import sys
import tempfile
import time

import torch
import transformers
from torch.utils.flop_counter import FlopCounterMode

from configuration_sisc import PLAIN_IMAGE_TOWER, SiscConfig
from modeling_sisc import SiscForPreTraining
from train_speed import (  # same folder
    ContentionMeter, rotated, summarize, synchronize, synthetic_batch, timed_region, write_results,
)

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))  # where results are written
SECTIONS = ("peak", "step", "profile", "trainer")
VARIANTS = ("fp32", "bf16", "eager", "grad_ckpt", "fused_adamw", "compile")
SMALL_VOCAB = 709  # the shipped vocabulary (sisc_vocab.txt)
BASE_VOCAB = 30522  # BERT-base-uncased
# Dense bf16 tensor-core peaks from the vendors' data sheets (without sparsity), for the written projection.
GPU_BF16_PEAK_FLOPS = {"A100 (SXM)": 312e12, "H100 / H200 (SXM)": 989e12}
PROJECTION_PAIRS = 4_000_000  # the paper's 4M-image pretraining set (CC3M + SBU + COCO + VG)
PROJECTION_GPUS = 8
# The default goals of issue 14 on the project's CPU machine.
GOAL_TRAINER_OVER_RAW = 1.10
GOAL_SHARE_OF_FP32_PEAK = 0.60


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--config", choices=("small", "base"), default="small",
                        help="small: the main job's model (image 64); base: the paper's (ViT-B/16 at 256 px, 6+6 BERT layers)")
    parser.add_argument("--device", choices=("cpu", "cuda"), default="cpu")
    parser.add_argument("--batch_size", type=int, default=None, help="pairs per step (default: 64 small, 4 base)")
    parser.add_argument("--seq_len", type=int, default=None, help="caption tokens, padded (default: 20 small, 30 base)")
    parser.add_argument("--image_size", type=int, default=None, help="default: the config's (64 small, 256 base)")
    parser.add_argument("--sections", nargs="+", choices=SECTIONS, default=list(SECTIONS))
    parser.add_argument("--variants", nargs="+", choices=VARIANTS, default=list(VARIANTS))
    parser.add_argument("--rounds", type=int, default=10, help="measured rounds of the step variants")
    parser.add_argument("--warmup", type=int, default=2, help="discarded warm-up rounds")
    parser.add_argument("--peak_size", type=int, default=None, help="side of the square matmuls (default: 2048 cpu, 8192 cuda)")
    parser.add_argument("--trainer_steps", type=int, default=30, help="steps of each trainer / raw run")
    parser.add_argument("--trainer_warmup", type=int, default=6, help="first steps of each run left out of its mean")
    parser.add_argument("--trainer_rounds", type=int, default=5, help="rounds of trainer and raw runs, rotated (after a warm-up run)")
    parser.add_argument("--trainer_workers", type=int, nargs="+", default=[2, 0],
                        help="DataLoader workers of the trainer runs (the main job's default is 2)")
    parser.add_argument("--trainer_args", default="",
                        help="more train/pretrain.py flags for the trainer and raw runs, e.g. \"--dataset pairs.jsonl\"")
    parser.add_argument("--profile_steps", type=int, default=3)
    parser.add_argument("--projection_mfu", type=float, default=0.4,
                        help="share of a GPU's bf16 peak assumed for the written projection (model FLOPs utilisation)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--output", default=None, help="default: benchmarks/results/throughput_<config>_<device>.json")
    args = parser.parse_args(argv)
    if args.device == "cuda" and not torch.cuda.is_available():
        parser.error("--device cuda but torch.cuda.is_available() is False")
    small = args.config == "small"
    args.batch_size = args.batch_size or (64 if small else 4)
    args.seq_len = args.seq_len or (20 if small else 30)
    args.image_size = args.image_size or (64 if small else 256)
    args.peak_size = args.peak_size or (2048 if args.device == "cpu" else 8192)
    for name in ("batch_size", "rounds", "trainer_steps", "trainer_rounds", "profile_steps", "peak_size"):
        if getattr(args, name) < 1:
            parser.error(f"--{name} must be >= 1")
    if args.seq_len < 3:
        parser.error("--seq_len must be >= 3 ([CLS] word [SEP])")
    if args.trainer_warmup >= args.trainer_steps - 1:
        parser.error("--trainer_warmup must leave at least two steps of each --trainer_steps run to measure")
    if "trainer" in args.sections and not small:
        parser.error("the trainer section runs the main job (the small model on the shapes data): use --config small")
    args.output = args.output or os.path.join(ROOT, "benchmarks", "results", f"throughput_{args.config}_{args.device}.json")
    return args


# ----------------------------------------------------------------------------------------------------------------
# Peak
# ----------------------------------------------------------------------------------------------------------------


def matmul_peak(device: torch.device, size: int, rounds: int, repeats: int = 3) -> dict[str, float]:
    """Achieved FLOP/s of a square (size x size) @ (size x size) matmul, fp32 and bf16: the median over interleaved
    rounds of `repeats` back-to-back matmuls. The dense-matmul limit this device reaches with torch's own kernels."""
    generator = torch.Generator().manual_seed(0)
    operands = {dtype: [torch.randn(size, size, generator=generator).to(device, dtype) for _ in range(2)]
                for dtype in (torch.float32, torch.bfloat16)}
    flops = 2 * size**3 * repeats
    times = {dtype: [] for dtype in operands}
    for round_index in range(rounds + 1):
        for dtype in rotated(list(operands), round_index):
            a, b = operands[dtype]
            synchronize(device)
            with timed_region():
                start = time.perf_counter()
                for _ in range(repeats):
                    a @ b
                synchronize(device)
                seconds = time.perf_counter() - start
            if round_index:  # the first round warms up
                times[dtype].append(seconds)
    return {str(dtype).removeprefix("torch."): flops / statistics.median(values) for dtype, values in times.items()}


def matmul_at_model_shapes(device: torch.device, config: SiscConfig, batch: int, rounds: int) -> dict:
    """FLOP/s of the model's own largest fp32 matmul (image tokens x hidden @ hidden x intermediate), as the
    forward's feed-forward layers run it: how far from the square-matmul peak a matmul of this model's width gets."""
    vision = config.vision_config
    tokens = batch * ((vision.image_size // vision.patch_size) ** 2 + 1)
    generator = torch.Generator().manual_seed(0)
    a = torch.randn(tokens, vision.hidden_size, generator=generator).to(device)
    b = torch.randn(vision.hidden_size, vision.intermediate_size, generator=generator).to(device)
    values = []
    for round_index in range(rounds + 1):
        synchronize(device)
        with timed_region():
            start = time.perf_counter()
            for _ in range(5):
                a @ b
            synchronize(device)
            seconds = (time.perf_counter() - start) / 5
        if round_index:
            values.append(seconds)
    return {"shape": [tokens, vision.hidden_size, vision.intermediate_size],
            "flops_per_s": 2 * tokens * vision.hidden_size * vision.intermediate_size / statistics.median(values)}


# ----------------------------------------------------------------------------------------------------------------
# Step
# ----------------------------------------------------------------------------------------------------------------


def build_config(args) -> SiscConfig:
    if args.config == "small":
        # the small model its committed tables measured (README, "Speed and scale")
        return SiscConfig.small(vocab_size=SMALL_VOCAB, image_size=args.image_size, **PLAIN_IMAGE_TOWER)
    return SiscConfig.base(vocab_size=BASE_VOCAB, image_size=args.image_size)


class SavedTensorBytes:
    """Bytes of the distinct storages autograd saves for backward while active: the activation memory of a step.
    Storages of `model`'s parameters (a matmul saves its weight) are not counted: they are held anyway."""

    def __init__(self, model: torch.nn.Module):
        self.parameters = {p.untyped_storage().data_ptr() for p in model.parameters()}
        self.storages: dict[int, int] = {}

    def pack(self, tensor):
        storage = tensor.untyped_storage()
        if storage.data_ptr() not in self.parameters:
            self.storages[storage.data_ptr()] = storage.nbytes()
        return tensor

    @property
    def total(self) -> int:
        return sum(self.storages.values())


class StepBench:
    """One model and one AdamW, stepped under each variant (toggled on the same objects between steps)."""

    def __init__(self, args, device: torch.device):
        self.args, self.device = args, device
        torch.manual_seed(args.seed)
        self.config = build_config(args)
        self.model = SiscForPreTraining(self.config).to(device).train()
        # torch's default AdamW implementation, as the trainer uses (the fused one rounds differently)
        self.optimizer = torch.optim.AdamW(self.model.parameters(), lr=1e-4, weight_decay=0.01)
        self.batch = synthetic_batch(self.config, args.batch_size, args.seq_len, args.seed, device)
        # torch.compile gets its own copy, never toggled: switching checkpointing or kernels on a compiled module
        # changes its hooks and config, and every change recompiles it
        self.compiled = None
        if "compile" in args.variants:
            self.compiled_model = copy.deepcopy(self.model)
            self.compiled = torch.compile(self.compiled_model)
            self.compiled_optimizer = torch.optim.AdamW(self.compiled_model.parameters(), lr=1e-4, weight_decay=0.01)
        self.compile_seconds = None
        self.fused_optimizer = None

    def set_variant(self, variant: str) -> torch.nn.Module:
        """Configure the model for `variant`; returns the module to call (the compiled wrapper for `compile`)."""
        model = self.model
        attention = "eager" if variant == "eager" else "sdpa"
        if model.config._attn_implementation != attention:
            model.set_attn_implementation(attention)
        if variant == "grad_ckpt" and not model.is_activation_checkpointing:
            model.activation_checkpointing_enable()  # non-reentrant torch.utils.checkpoint
        elif variant != "grad_ckpt" and model.is_activation_checkpointing:
            model.activation_checkpointing_disable()
            model.disable_input_require_grads()  # enabling added hooks on the embeddings; disabling leaves them
        if variant == "compile":
            return self.compiled
        return model

    def step(self, variant: str, seed: int, hooks=None) -> float:
        """One optimizer step under `variant`; its wall time in seconds."""
        module, batch, device = self.set_variant(variant), self.batch, self.device
        torch.manual_seed(seed)  # same masking and hard-negative draws in every variant of a round
        autocast = torch.autocast(device.type, dtype=torch.bfloat16, enabled=variant == "bf16")
        synchronize(device)
        start = time.perf_counter()
        with autocast:
            if hooks is None:
                loss = module(**batch).loss
            else:
                with torch.autograd.graph.saved_tensors_hooks(hooks.pack, lambda tensor: tensor):
                    loss = module(**batch).loss
        loss.backward()
        model, optimizer = self.model, self.optimizer
        if variant == "compile":
            model, optimizer = self.compiled_model, self.compiled_optimizer
        elif variant == "fused_adamw":
            if self.fused_optimizer is None:  # its own moments: the speed of a step does not depend on their values
                self.fused_optimizer = torch.optim.AdamW(self.model.parameters(), lr=1e-4, weight_decay=0.01, fused=True)
            optimizer = self.fused_optimizer
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        synchronize(device)
        seconds = time.perf_counter() - start
        if not math.isfinite(loss.item()):
            raise RuntimeError(f"non-finite loss in variant {variant}")
        return seconds

    def count_flops(self, variant: str) -> int:
        """FLOPs of forward + backward of one step, counted by torch's flop counter on the real step (matmuls,
        convolutions, attention). Attention is counted in its eager form, whose matmuls the counter sees on every
        device; gradient checkpointing adds its recomputed forward."""
        module = self.set_variant(variant if variant == "grad_ckpt" else "eager")
        with FlopCounterMode(display=False) as counter:
            module(**self.batch).loss.backward()
        self.optimizer.zero_grad(set_to_none=True)
        return counter.get_total_flops()

    def forward_flops_by_part(self) -> dict[str, int]:
        """The counted FLOPs of the fp32 step's FORWARD by top-level part of the model (image tower, text tower,
        fusion, heads; the parts that run twice, like the text tower for ITC and MLM, are counted at every call).
        The backward is left out: the counter's module tracking is reliable only in the forward."""
        self.set_variant("eager")
        with torch.no_grad(), FlopCounterMode(display=False, depth=3) as counter:
            self.model(**self.batch)
        parts = {}
        for name, ops in counter.get_flop_counts().items():
            # module names look like "SiscForPreTraining.sisc.vision_model"; keep the model's direct parts
            pieces = name.split(".")
            if (len(pieces) == 3 and pieces[1] == "sisc") or (len(pieces) == 2 and pieces[1] != "sisc"):
                parts[".".join(pieces[1:])] = sum(ops.values())
        parts["total"] = sum(counter.get_flop_counts()["Global"].values())
        return parts

    def memory(self, variant: str, seed: int) -> dict:
        """What one step under `variant` holds: CUDA peak allocated bytes, or (CPU) the bytes saved for backward."""
        result = {}
        if self.device.type == "cuda":
            torch.cuda.reset_peak_memory_stats(self.device)
            before = torch.cuda.memory_allocated(self.device)
            self.step(variant, seed)
            result["cuda_peak_allocated_bytes"] = torch.cuda.max_memory_allocated(self.device)
            result["cuda_peak_above_resident_bytes"] = result["cuda_peak_allocated_bytes"] - before
        if variant != "compile":  # a compiled graph saves its tensors inside the graph, out of the hooks' sight
            saved = SavedTensorBytes(self.model)
            self.step(variant, seed, hooks=saved)
            result["saved_for_backward_bytes"] = saved.total
            result["saved_for_backward_bytes_per_sample"] = saved.total / self.args.batch_size
        return result


def marginal_saved_bytes(bench: StepBench, seed: int) -> dict | None:
    """Bytes saved for backward at the batch and at half of it (fp32): what one more sample costs, and what does
    not grow with the batch (the N x N contrastive matrices grow with its square, a small share at these sizes)."""
    full, half = bench.args.batch_size, bench.args.batch_size // 2
    if half < 2:
        return None
    whole = bench.batch
    bench.batch = {name: value[:half] for name, value in whole.items()}
    try:
        half_bytes = bench.memory("fp32", seed)["saved_for_backward_bytes"]
    finally:
        bench.batch = whole
    full_bytes = bench.memory("fp32", seed)["saved_for_backward_bytes"]
    return {"batch": full, "half_batch": half, "saved_bytes": full_bytes, "saved_bytes_half_batch": half_bytes,
            "bytes_per_extra_sample": (full_bytes - half_bytes) / (full - half)}


def gpu_projection(flops_per_sample: float, mfu: float) -> dict:
    """Samples per second on one GPU at `mfu` of its bf16 peak, from the counted FLOPs, and the wall time of one epoch
    of PROJECTION_PAIRS pairs on PROJECTION_GPUS of them (perfect scaling: an upper bound on speed)."""
    projection = {}
    for gpu, peak in GPU_BF16_PEAK_FLOPS.items():
        per_second = mfu * peak / flops_per_sample
        projection[gpu] = {"samples_per_s": per_second,
                           "epoch_hours": PROJECTION_PAIRS / (per_second * PROJECTION_GPUS) / 3600}
    return projection


def parameter_bytes(model: torch.nn.Module) -> dict[str, int]:
    params = dict(model.named_parameters())  # tied weights once
    trainable = sum(p.numel() for p in params.values() if p.requires_grad)
    weights = sum(p.numel() * p.element_size() for p in params.values())
    return {"parameters": sum(p.numel() for p in params.values()), "trainable_parameters": trainable,
            "weights_bytes": weights,
            # fp32 gradient + AdamW's two moments of every trainable parameter
            "gradients_and_adamw_bytes": 12 * trainable}


def measure_steps(bench: StepBench, args) -> tuple[dict[str, list[float]], float | None]:
    """Seconds of every variant's step over the measured rounds, and the CPU share other processes used meanwhile."""
    variants = list(args.variants)
    if "compile" in variants:  # compile outside the timed rounds: report its one-off cost
        start = time.perf_counter()
        bench.step("compile", args.seed)
        bench.compile_seconds = time.perf_counter() - start
        print(f"torch.compile: first step (compiling) took {bench.compile_seconds:.1f} s")
    times = {variant: [] for variant in variants}
    meter = ContentionMeter()  # after compiling: its worker processes are not machine noise
    for round_index in range(args.warmup + args.rounds):
        for variant in rotated(variants, round_index):
            with timed_region():
                seconds = bench.step(variant, args.seed * 100003 + round_index)
            if round_index >= args.warmup:
                times[variant].append(seconds)
    return times, meter.others_share()


# ----------------------------------------------------------------------------------------------------------------
# Profile
# ----------------------------------------------------------------------------------------------------------------

# operation name fragments -> kind, first match wins
OP_KINDS = (
    ("attention", ("scaled_dot_product", "flash_attention", "efficient_attention", "_softmax", "softmax")),
    ("matmul", ("addmm", "::mm", "bmm", "matmul", "linear", "conv", "baddbmm")),
    ("normalisation", ("layer_norm", "native_layer_norm")),
    ("optimizer", ("adam", "_foreach", "clip_grad", "norm")),
    ("activation", ("gelu", "tanh", "relu")),
    ("dropout / random", ("dropout", "bernoulli", "multinomial", "rand")),
    ("loss", ("cross_entropy", "nll_loss", "log_softmax", "logsumexp")),
    ("copies / reshapes", ("copy_", "contiguous", "clone", "cat", "index", "gather", "scatter", "embedding", "to", "transpose", "permute")),
    ("element-wise", ("add", "mul", "div", "sub", "where", "exp", "sum", "mean", "pow", "sqrt", "fill", "zero", "masked")),
)


def op_kind(name: str) -> str:
    lowered = name.lower()
    for kind, fragments in OP_KINDS:
        if any(fragment in lowered for fragment in fragments):
            return kind
    return "other"


def profile_step(bench: StepBench, args) -> dict:
    """Self time of every operation of `--profile_steps` fp32 steps, by kind and the top ten."""
    from torch.profiler import ProfilerActivity, profile

    activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if bench.device.type == "cuda" else [])
    bench.step("fp32", args.seed)
    with profile(activities=activities) as prof:
        for i in range(args.profile_steps):
            bench.step("fp32", args.seed + i)
    device_time = "self_device_time_total" if bench.device.type == "cuda" else "self_cpu_time_total"
    events = [(event.key, getattr(event, device_time)) for event in prof.key_averages()]
    total = sum(us for _, us in events) or 1.0
    kinds: dict[str, float] = {}
    for name, us in events:
        kinds[op_kind(name)] = kinds.get(op_kind(name), 0.0) + us
    top = sorted(events, key=lambda item: -item[1])[:10]
    return {
        "time_by_kind_share": {kind: us / total for kind, us in sorted(kinds.items(), key=lambda item: -item[1])},
        "top_ops": [{"op": name, "share": us / total, "ms_per_step": us / 1e3 / args.profile_steps} for name, us in top],
        "profiled_ms_per_step": total / 1e3 / args.profile_steps,
    }


# ----------------------------------------------------------------------------------------------------------------
# Trainer vs raw step
# ----------------------------------------------------------------------------------------------------------------


def trainer_vs_raw(args) -> dict:
    """The main job's trainer against the raw step on the same model, optimizer and batches (see the docstring)."""
    from accelerate.utils import set_seed
    from transformers import get_cosine_schedule_with_warmup

    from sisc_train.loop.trainer import param_groups
    from sisc_train.tasks import pretraining

    step_times: list[float] = []
    recorded: list[dict] = []  # the batches of the first (warm-up) trainer run, which the raw runs replay

    class TimedTask(pretraining.PretrainingTask):
        def training_step(self, model, batch, step):
            if record:
                recorded.append({name: value.clone() if isinstance(value, torch.Tensor) else value for name, value in batch.items()})
            return super().training_step(model, batch, step)

        def after_step(self, model, outputs, step, total_steps):
            super().after_step(model, outputs, step, total_steps)
            step_times.append(time.perf_counter())

    output_dir = tempfile.mkdtemp(prefix="sisc-throughput-")
    common = ["--max_steps", str(args.trainer_steps), "--output_dir", output_dir, "--overwrite_output_dir",
              "--per_device_batch_size", str(args.batch_size)]
    trainer_argv = [*common, "--validation_split", "", "--eval_split", "", "--report_to", "none", *shlex.split(args.trainer_args)]

    def run_trainer(workers: int) -> list[float]:
        step_times.clear()
        pretraining.main([*trainer_argv, "--num_workers", str(workers)], task_class=TimedTask)
        return [b - a for a, b in zip(step_times[args.trainer_warmup:], step_times[args.trainer_warmup + 1:])]

    def run_raw() -> list[float]:
        """The same task's model, optimizer groups and schedule, on the batches the trainer drew (same order)."""
        from accelerate import Accelerator

        task = pretraining.PretrainingTask(*pretraining.parse_args(pretraining.ARGUMENTS, trainer_argv))
        task.accelerator = Accelerator()
        set_seed(task.args.seed)
        task.load_data()  # the processor and data the model is built for
        model = task.build_model(args.trainer_steps).train()
        task_args = task.args
        optimizer = torch.optim.AdamW(param_groups(model, task_args.learning_rate, task_args.vision_lr(), task_args.weight_decay))
        scheduler = get_cosine_schedule_with_warmup(optimizer, task_args.warmup_steps, args.trainer_steps)
        stamps = []
        for step, batch in enumerate(recorded, start=1):
            outputs = task.training_step(model, batch, step)
            outputs.loss.backward()
            torch.nn.utils.clip_grad_norm_(model.parameters(), task_args.max_grad_norm)
            optimizer.step()
            scheduler.step()
            optimizer.zero_grad(set_to_none=True)
            stamps.append(time.perf_counter())
        return [b - a for a, b in zip(stamps[args.trainer_warmup:], stamps[args.trainer_warmup + 1:])]

    record = True
    run_trainer(args.trainer_workers[0])  # warm-up (dataset cache, first-touch costs), recording its batches
    record = False
    trainers = {f"trainer_{workers}_workers": workers for workers in args.trainer_workers}
    runs = {**{name: [] for name in trainers}, "raw_step": []}
    meter = ContentionMeter()
    for round_index in range(args.trainer_rounds):
        for name in rotated(list(runs), round_index):
            runs[name].append(run_trainer(trainers[name]) if name in trainers else run_raw())
    means = {name: [statistics.fmean(run) for run in values] for name, values in runs.items()}
    result = {"runs": {name: {"mean_s_per_step_by_round": means[name], "median_of_round_means_s": statistics.median(means[name]),
                              "median_step_s": statistics.median([t for run in runs[name] for t in run])} for name in runs}}
    raw = result["runs"]["raw_step"]["median_of_round_means_s"]
    result["other_processes_cpu_share"] = meter.others_share()
    result["trainer_over_raw"] = {name: result["runs"][name]["median_of_round_means_s"] / raw for name in trainers}
    result["paired_ratios"] = {name: [a / b for a, b in zip(means[name], means["raw_step"])] for name in trainers}
    result["goal_max"] = GOAL_TRAINER_OVER_RAW
    # the main job's own setting decides
    main_job = f"trainer_{pretraining.PretrainingArguments.num_workers}_workers"
    result["goal_met"] = result["trainer_over_raw"][main_job] <= GOAL_TRAINER_OVER_RAW if main_job in trainers else None
    result["settings"] = {"steps_per_run": args.trainer_steps, "left_out_first": args.trainer_warmup,
                          "rounds": args.trainer_rounds, "trainer_argv": trainer_argv}
    return result


# ----------------------------------------------------------------------------------------------------------------
# Main
# ----------------------------------------------------------------------------------------------------------------


def gib(value: float) -> str:
    return f"{value / 2**30:.2f} GiB" if value >= 2**30 else f"{value / 2**20:.1f} MiB"


def main(argv=None) -> dict:
    args = parse_args(argv)
    # switching the attention kernel between variants warns that the fusion encoder's sub-config has no sub-model of
    # its own (it is built from BERT modules, which read the setting at call time): expected here, not worth a warning
    transformers.logging.get_logger("transformers.modeling_utils").addFilter(
        lambda record: "sub-config `fusion_encoder_config`" not in record.getMessage())
    device = torch.device(args.device)
    environment = {
        "torch": torch.__version__, "transformers": transformers.__version__, "python": platform.python_version(),
        "platform": platform.platform(), "device": args.device,
        "device_name": torch.cuda.get_device_name(device) if device.type == "cuda" else platform.processor() or "cpu",
        "cpu_capability": torch.backends.cpu.get_cpu_capability(), "num_threads": torch.get_num_threads(),
        "cpu_count": os.cpu_count(),
    }
    print(f"torch {environment['torch']} | transformers {environment['transformers']} | {args.device} "
          f"({environment['device_name']}, {environment['cpu_capability']}) | torch threads {environment['num_threads']}")
    results = {"command": " ".join(["python benchmarks/throughput.py", *(sys.argv[1:] if argv is None else argv)]),
               "environment": environment, "settings": {k: v for k, v in vars(args).items() if k != "output"}}
    started = time.perf_counter()
    lines = []

    peak = None
    if "peak" in args.sections:
        peak = matmul_peak(device, args.peak_size, max(args.rounds, 5))
        results["matmul_peak_flops"] = peak
        model_shape = matmul_at_model_shapes(device, build_config(args), args.batch_size, max(args.rounds, 5))
        results["matmul_at_model_shape"] = model_shape
        lines += ["", f"Dense matmul peak ({args.peak_size}^2, measured): fp32 {peak['float32'] / 1e9:.1f} GFLOP/s, "
                      f"bf16 {peak['bfloat16'] / 1e9:.1f} GFLOP/s; the model's feed-forward matmul "
                      f"{' x '.join(map(str, model_shape['shape']))} in fp32: {model_shape['flops_per_s'] / 1e9:.1f} GFLOP/s "
                      f"({model_shape['flops_per_s'] / peak['float32']:.0%} of the peak)"]

    bench = None
    if "step" in args.sections or "profile" in args.sections:
        bench = StepBench(args, device)
        results["model"] = {"config": args.config, "image_size": args.image_size, "batch_size": args.batch_size,
                            "seq_len": args.seq_len, **parameter_bytes(bench.model)}
    if "step" in args.sections:
        flops = {variant: bench.count_flops(variant) for variant in ("fp32", "grad_ckpt")}
        results["forward_flops_by_part"] = bench.forward_flops_by_part()
        times, results["step_other_processes_cpu_share"] = measure_steps(bench, args)
        memory = {variant: bench.memory(variant, args.seed) for variant in args.variants}
        results["marginal_memory"] = marginal = marginal_saved_bytes(bench, args.seed)
        steps = {}
        parts = results["forward_flops_by_part"]
        for variant, values in times.items():
            stats = summarize(values)
            counted = flops["grad_ckpt" if variant == "grad_ckpt" else "fp32"]
            stats.update(flops=counted, samples_per_s=args.batch_size / stats["median"],
                         achieved_flops_per_s=counted / stats["median"], memory=memory[variant])
            # the useful work is the fp32 step's: recomputation does not count towards utilisation
            useful = flops["fp32"] / stats["median"]
            if peak:
                stats["share_of_fp32_peak"] = useful / peak["float32"]
                stats["share_of_bf16_peak"] = useful / peak["bfloat16"]
            steps[variant] = stats
        results["step"] = steps
        results["compile_seconds"] = bench.compile_seconds
        base = steps.get("fp32")
        lines += ["", f"Training step of SiscForPreTraining ({args.config}), batch {args.batch_size}, captions {args.seq_len} "
                      f"tokens, image {args.image_size}, {args.rounds} rounds, {args.device}",
                  f"counted FLOPs per step: {flops['fp32'] / 1e9:.2f} GFLOP (forward + backward; "
                  f"{flops['fp32'] / args.batch_size / 1e9:.3f} GFLOP per sample); with gradient checkpointing "
                  f"{flops['grad_ckpt'] / 1e9:.2f} GFLOP",
                  "  forward by part: " + ", ".join(f"{name.removeprefix('sisc.')} {value / parts['total']:.0%}"
                                                    for name, value in parts.items() if name != "total" and value),
                  f"{'variant':<10} {'median ms':>10} {'q1-q3 ms':>15} {'samples/s':>10} {'GFLOP/s':>8} {'% fp32 pk':>9} "
                  f"{'% bf16 pk':>9} {'vs fp32':>8} {'memory':>28}"]
        for variant, stats in steps.items():
            memory_text = (gib(stats["memory"]["cuda_peak_allocated_bytes"]) + " peak" if "cuda_peak_allocated_bytes" in stats["memory"]
                           else gib(stats["memory"]["saved_for_backward_bytes_per_sample"]) + "/sample saved"
                           if "saved_for_backward_bytes_per_sample" in stats["memory"] else "n/a")
            lines.append(
                f"{variant:<10} {1e3 * stats['median']:>10.1f} {1e3 * stats['q1']:>7.1f}-{1e3 * stats['q3']:<7.1f} "
                f"{stats['samples_per_s']:>10.1f} {stats['achieved_flops_per_s'] / 1e9:>8.1f} "
                f"{100 * stats.get('share_of_fp32_peak', float('nan')):>8.1f}% {100 * stats.get('share_of_bf16_peak', float('nan')):>8.1f}% "
                f"{stats['median'] / base['median'] if base else float('nan'):>7.3f}x {memory_text:>28}")
        sizes = results["model"]
        lines.append(f"weights {gib(sizes['weights_bytes'])} ({sizes['parameters']:,} parameters), gradients + AdamW states "
                     f"{gib(sizes['gradients_and_adamw_bytes'])}")
        if base and peak:
            share = base["share_of_fp32_peak"]
            results["goal_fp32_share_of_peak"] = {"goal_min": GOAL_SHARE_OF_FP32_PEAK, "share": share,
                                                  "met": share >= GOAL_SHARE_OF_FP32_PEAK}
            lines.append(f"fp32 step at {share:.0%} of the measured fp32 peak; goal >= {GOAL_SHARE_OF_FP32_PEAK:.0%}: "
                         + ("met" if share >= GOAL_SHARE_OF_FP32_PEAK else "not met (see the profile for what takes the time)"))
        results["gpu_projection"] = projection = gpu_projection(flops["fp32"] / args.batch_size, args.projection_mfu)
        lines.append(f"projection from the counted FLOPs at {args.projection_mfu:.0%} of the bf16 peak: " + "; ".join(
            f"{gpu} {p['samples_per_s']:,.0f} samples/s, one epoch of {PROJECTION_PAIRS / 1e6:g}M pairs on {PROJECTION_GPUS} "
            f"GPUs {60 * p['epoch_hours']:.1f} min" for gpu, p in projection.items()))
        if marginal:
            lines.append(f"saved for backward (fp32): {gib(marginal['saved_bytes'])} at batch {marginal['batch']}, "
                         f"{gib(marginal['saved_bytes_half_batch'])} at {marginal['half_batch']}: "
                         f"{gib(marginal['bytes_per_extra_sample'])} per extra sample")
        if bench.compile_seconds is not None:
            lines.append(f"torch.compile's first step (compiling) took {bench.compile_seconds:.1f} s")

    if "profile" in args.sections:
        results["profile"] = profile = profile_step(bench, args)
        if "step" in args.sections:
            # all counted FLOPs are matmuls, convolutions or attention: their rate inside those kernels
            kernel_seconds = profile["profiled_ms_per_step"] / 1e3 * (profile["time_by_kind_share"].get("matmul", 0)
                                                                      + profile["time_by_kind_share"].get("attention", 0))
            profile["flops_per_s_inside_matmul_and_attention"] = flops["fp32"] / kernel_seconds if kernel_seconds else None
        lines += ["", f"Profile of the fp32 step ({args.profile_steps} steps, self time, "
                      f"{profile['profiled_ms_per_step']:.0f} ms per step under the profiler):",
                  "  by kind: " + ", ".join(f"{kind} {share:.0%}" for kind, share in profile["time_by_kind_share"].items()),
                  *([f"  inside the matmul and attention kernels the counted FLOPs run at "
                     f"{profile['flops_per_s_inside_matmul_and_attention'] / 1e9:.1f} GFLOP/s"
                     + (f" ({profile['flops_per_s_inside_matmul_and_attention'] / peak['float32']:.0%} of the fp32 peak)" if peak else "")]
                    if profile.get("flops_per_s_inside_matmul_and_attention") else []),
                  "  top operations:"]
        lines += [f"    {op['op']:<48} {100 * op['share']:5.1f}%  {op['ms_per_step']:8.1f} ms/step" for op in profile["top_ops"]]
    if bench is not None:
        del bench

    if "trainer" in args.sections:
        results["trainer"] = trainer = trainer_vs_raw(args)
        lines += ["", f"Trainer vs raw step (the main job, batch {args.batch_size}, {args.trainer_rounds} rounds of "
                      f"{args.trainer_steps} steps each, first {args.trainer_warmup} left out)",
                  "  ms per step: mean of each run's steady steps, median over rounds (median single step)"]
        for name, run in trainer["runs"].items():
            ratio = trainer["trainer_over_raw"].get(name)
            lines.append(f"  {name:<20} {1e3 * run['median_of_round_means_s']:8.1f} ms ({1e3 * run['median_step_s']:.1f})"
                         + (f"  {ratio:.3f}x the raw step (per round: "
                            + ", ".join(f"{r:.3f}" for r in trainer["paired_ratios"][name]) + ")" if ratio else ""))
        if trainer["goal_met"] is not None:
            lines.append(f"  goal for the main job's setting <= {GOAL_TRAINER_OVER_RAW:.2f}x: {'met' if trainer['goal_met'] else 'NOT met'}")

    shares = [share for share in (results.get("step_other_processes_cpu_share"),
                                  results.get("trainer", {}).get("other_processes_cpu_share")) if share is not None]
    others = max(shares) if shares else None
    results["elapsed_s"] = time.perf_counter() - started
    results["other_processes_cpu_share"] = others
    results["peak_rss_bytes"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    lines += ["", f"process peak resident memory {gib(results['peak_rss_bytes'])}; measured in {results['elapsed_s']:.0f} s; "
                  "other processes used " + ("n/a" if others is None else f"{100 * others:.1f}%")
                  + " of the machine's CPU in the noisiest measured section (0% = quiet machine)"]
    print("\n".join(lines))
    write_results(results, args.output)
    return results


if __name__ == "__main__":
    main()
