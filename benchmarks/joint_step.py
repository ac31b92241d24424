"""What the main job's second-stage (joint) step costs, with and without each of its speed changes.

    python benchmarks/joint_step.py                       # CPU, the main job's model and batches, 8 rounds
    python benchmarks/joint_step.py --device cuda --rounds 20

One step = forward of every loss (SRCL + ITM + MLM + word prediction), backward and gradient clipping, on the small
default model (`SiscConfig.small`) and on real batches of the embedded shapes data (64 pairs, captions padded to
each batch's longest, as the collator does: their lengths decide what the length groups save). There is no AdamW
update, which costs the same in every variant: so all variants see the same weights, and their losses can be
compared, a check that the shared fusion computes what the one-pass fusion does. Variants, toggled on ONE model
between steps:

- `before`: text and fusion encoders with BERT's dropout 0.1, and the fusion encoder run in one pass on every row
  with each row's image states gathered (how the step ran before this change);
- `shared_fusion`: the fusion encoder as it runs now: ITM's image keys / values projected once per image
  (`image_index`), the rows in two groups by caption length (`length_groups`); dropout 0.1;
- `no_text_dropout`: one-pass fusion, dropout 0 in the text and fusion encoders (`--text_dropout 0`);
- `main_job`: both, the main job's step now;
- `main_job_bf16`: that step in bfloat16 autocast (`--mixed_precision bf16`).

Method as in `train_speed.py`: warm-up rounds discarded; each measured round runs every variant on every batch
once, rotating the order of the variants from round to round; every step of a round starts from the same seed;
medians over rounds, ratios of medians with the median of the per-round ratios beside them. The share of the CPU
that other processes used is printed: trust runs where it is near 0%.
"""

from __future__ import annotations

import argparse
import os
import random
import statistics
import sys
import time

import torch

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

from configuration_sisc import SiscConfig  # noqa: E402
from modeling_sisc import SiscFusionEncoder, SiscForPreTraining  # noqa: E402
from processing_sisc import build_default_processor  # noqa: E402
from sisc_train.data.pairs import PairCollator  # noqa: E402
from sisc_train.synthetic.shapes import load_shapes_dataset  # noqa: E402
from sisc_train.tasks.pretraining import DataArguments, shapes_config_from_args  # noqa: E402
from train_speed import ContentionMeter, paired_ratio, rotated, summarize, synchronize, timed_region, write_results  # noqa: E402

VARIANTS = ("before", "shared_fusion", "no_text_dropout", "main_job", "main_job_bf16")
BERT_DROPOUT = 0.1
SHARED_FUSION = SiscFusionEncoder.forward


def one_pass_fusion(self, text_hidden_states, text_attention_mask, image_hidden_states, image_attention_mask=None,
                    image_index=None):
    """The fusion encoder before this change: every row in one pass, its image states gathered."""
    if image_index is not None:
        image_hidden_states = image_hidden_states[image_index]
        image_attention_mask = None if image_attention_mask is None else image_attention_mask[image_index]
    return self._fuse(text_hidden_states, text_attention_mask, self.image_projection(image_hidden_states),
                      image_attention_mask, None)


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--device", choices=("cpu", "cuda"), default="cpu")
    parser.add_argument("--batch_size", type=int, default=64)
    parser.add_argument("--batches", type=int, default=3, help="distinct real batches, each stepped once per variant and round")
    parser.add_argument("--rounds", type=int, default=8)
    parser.add_argument("--warmup", type=int, default=1)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--data_cache_dir", default=os.path.join(ROOT, "data_cache", "shapes"))
    parser.add_argument("--shapes_num_train", type=int, default=None, help="default: the main job's split")
    parser.add_argument("--image_size", type=int, default=64, help="of the small model (tests: smaller)")
    parser.add_argument("--hidden_size", type=int, default=128, help="of the small model (tests: smaller)")
    parser.add_argument("--output", default=os.path.join(ROOT, "benchmarks", "results", "joint_step_cpu.json"))
    return parser.parse_args(argv)


def real_batches(args, processor, device) -> list[dict]:
    """`--batches` random batches of the default shapes split, collated as the trainer does."""
    data_args = DataArguments(shapes_num_train=args.shapes_num_train)
    rows = load_shapes_dataset(shapes_config_from_args(data_args), cache_dir=args.data_cache_dir)["train"]
    rng = random.Random(args.seed)
    collate = PairCollator(processor)
    batches = []
    for _ in range(args.batches):
        batch = collate([rows[i] for i in rng.sample(range(len(rows)), args.batch_size)])
        batches.append({name: batch[name].to(device) for name in ("input_ids", "attention_mask", "pixel_values", "image_ids")})
    return batches


def set_variant(model: SiscForPreTraining, variant: str) -> None:
    SiscFusionEncoder.forward = one_pass_fusion if variant in ("before", "no_text_dropout") else SHARED_FUSION
    dropout = BERT_DROPOUT if variant in ("before", "shared_fusion") else 0.0
    for tower in (model.sisc.text_model, model.sisc.fusion_model):
        for module in tower.modules():
            if isinstance(module, torch.nn.Dropout):  # the attention kernels read their module's p too
                module.p = dropout


def main(argv=None) -> dict:
    args = parse_args(argv)
    device = torch.device(args.device)
    processor = build_default_processor(image_size=args.image_size)
    config = SiscConfig.small(vocab_size=len(processor.tokenizer), image_size=args.image_size, hidden_size=args.hidden_size)
    torch.manual_seed(args.seed)
    model = SiscForPreTraining(config).to(device).train()
    batches = real_batches(args, processor, device)
    lengths = [int(b["attention_mask"].shape[1]) for b in batches]
    mean_tokens = statistics.fmean(float(b["attention_mask"].sum(1).float().mean()) for b in batches)
    print(f"{torch.__version__}, {torch.get_num_threads()} threads, {args.device}; batches padded to {lengths} tokens, "
          f"{mean_tokens:.1f} real tokens per caption on average")

    def step(variant: str, batch: dict, seed: int) -> tuple[float, float]:
        set_variant(model, variant)
        torch.manual_seed(seed)
        synchronize(device)
        with timed_region():
            began = time.perf_counter()
            with torch.autocast(device.type, dtype=torch.bfloat16, enabled=variant == "main_job_bf16"):
                loss = model(**batch).loss
            loss.backward()
            torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
            model.zero_grad(set_to_none=True)  # no update: every variant sees the same weights
            synchronize(device)
            return time.perf_counter() - began, loss.item()

    times = {variant: [] for variant in VARIANTS}
    losses = {variant: [] for variant in VARIANTS}  # of the first batch, every round
    meter = None
    try:
        for round_index in range(args.warmup + args.rounds):
            if round_index == args.warmup:
                meter = ContentionMeter()
            for variant in rotated(VARIANTS, round_index):
                measured = [step(variant, batch, args.seed + round_index * 100 + i) for i, batch in enumerate(batches)]
                if round_index >= args.warmup:
                    times[variant].append(sum(seconds for seconds, _ in measured) / len(batches))
                    losses[variant].append(measured[0][1])
    finally:
        SiscFusionEncoder.forward = SHARED_FUSION
    others = meter.others_share() if meter else None
    base = times["before"]
    # without dropout the shared fusion must give the one-pass losses (same seed, same draws) up to float rounding
    same_math = max(abs(a - b) for a, b in zip(losses["main_job"], losses["no_text_dropout"]))
    results = {"device": args.device, "threads": torch.get_num_threads(), "torch": torch.__version__,
               "padded_lengths": lengths, "mean_real_tokens": mean_tokens, "others_cpu_share": others,
               "shared_vs_one_pass_loss_difference": same_math, "args": vars(args), "variants": {}}
    print(f"other processes used {100 * others:.1f}% of the CPU" if others is not None else "")
    print(f"loss of the shared fusion minus the one-pass one (no dropout, same draws): {same_math:.2e}")
    print(f"{'variant':18s} {'median step':>12s} {'quartiles':>15s} {'x before':>9s} {'per-round':>10s}")
    for variant in VARIANTS:
        stats = summarize(times[variant])
        ratio = stats["median"] / statistics.median(base)
        per_round = paired_ratio(times[variant], base)
        results["variants"][variant] = {**stats, "ratio_to_before": ratio, "per_round_ratio": per_round,
                                        "seconds": times[variant], "losses": losses[variant]}
        print(f"{variant:18s} {1000 * stats['median']:9.0f} ms {1000 * stats['q1']:6.0f}-{1000 * stats['q3']:<6.0f} "
              f"{ratio:8.3f}x {per_round:9.3f}x")
    write_results(results, args.output)
    return results


if __name__ == "__main__":
    main()
