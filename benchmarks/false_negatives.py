"""False-negative benchmark: regulated contrast (SRCL) against InfoNCE and the other ways of handling false negatives.

    python benchmarks/false_negatives.py                       # builds its warm start and teacher first (+~15 min)
    python benchmarks/false_negatives.py --warm_start outputs/sisc-small-2ep --teacher outputs/sisc-small-2ep-retrieval  # ~40 min
    python benchmarks/false_negatives.py --settings high --seeds 0 --objectives infonce srcl_teacher_mean oracle

Every student starts from the same warm start (the small default model after 2 epochs of its default pretraining: a ViT
trained from scratch sits on the collapsed ln(N) plateau of the contrastive loss for its first ~100 steps, so
students started from random weights would all measure that plateau, not their objective) and is trained with the
same data, budget and seeds under each objective, ITC only (ITM and MLM are switched off so that only the
contrastive objective differs), on a low and a high false-negative preset of the embedded shapes dataset. Each is
evaluated zero-shot on the held-out test split with the metrics that credit every relevant item (R@1 / R@5 over
all relevant items, mAP@R; TR and IR). Objectives:

    infonce              plain InfoNCE (CLIP / ALBEF ITC; pairs of one image excluded, as everywhere in SISC)
    srcl_teacher_mean    SRCL, frozen teacher mixed in with alpha 1 -> 0 over the run, mean normalisation
    srcl_teacher_softmax_d{2,4,8}   the same with softmax normalisation, delta 2 / 4 / 8 (delta is the sharpness)
    srcl_teacher_{mean,softmax_d4}_alpha1   the teacher alone for the whole run (alpha held at 1)
    srcl_self_mean       SRCL from the model's own similarities only (no teacher); srcl_self_softmax_d8 likewise
    srcl_weak_teacher_mean          SRCL with the warm start itself as the teacher (a weaker teacher)
    remove_0.2, remove_0.5          the paper's removal heuristic: drop negatives whose (teacher) weight is < t
    albef_md             ALBEF's momentum distillation: momentum encoder, queue, soft targets (InfoNCE weights)
    oracle               InfoNCE that never uses the dataset's true false negatives as negatives (upper bound)

The peers (`--objectives` from PEER_OBJECTIVES, e.g. `--objectives peers`):

    soft_infonce_{teacher,self}     Soft-InfoNCE (Li et al. 2023) with alpha 8, weights from the teacher (mixed in
                                    1 -> 0, as for SRCL) / from the model itself
    debiased_p{0.02,0.15}           debiased contrastive loss (Chuang et al. 2020), class prior tau+ 0.02 / 0.15
                                    (about the low / high setting's true false-negative share)
    hard_negatives       hard-negative weighting (Robinson et al. 2021), beta 0.3, prior 0: the hardest negatives up
    siglip               SigLIP's sigmoid loss per pair (Zhai et al. 2023), learned bias from -10
    multi_positive       pairs with the same caption text (and the same image) as extra positives
    label_smoothing_0.1  InfoNCE with label smoothing 0.1

Without --warm_start / --teacher they are trained first (about 10 minutes): the warm start with the default
pretraining recipe for 2 epochs (`train/pretrain.py --num_epochs 2`, InfoNCE), the teacher by training the warm start on for
`--teacher_steps` more steps with InfoNCE (+ ITM): a better-trained model of the same data, as the paper's teacher
is a pretrained model. Finished runs are kept (`<out>/runs/...`) and skipped when the benchmark is run
again, so an interrupted benchmark continues where it stopped. Output: one table per setting on stdout (mean and
std over seeds; the difference to InfoNCE, paired by seed, with a 95% t-interval), saved as Markdown and JSON, a
PNG plot, and the regulation-weight diagnostics of each objective (the weight the true false negatives got).
"""

from __future__ import annotations

import argparse
import json
import math
import os
import statistics
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))  # where results are written


METRICS = ("tr_r1_any", "tr_r5_any", "tr_map_r", "ir_r1_any", "ir_r5_any", "ir_map_r")
DIAGNOSTICS = (
    "weights/std",
    "false_negatives/mean_weight",
    "false_negatives/frac_weight_below_0.5",
    "false_negatives/fraction_of_pairs",
)
TEACHER = "teacher"
WEAK_TEACHER = "weak_teacher"
OBJECTIVES: dict[str, tuple[list[str], str | None]] = {
    # name: (pretrain.py arguments, teacher it needs)
    "infonce": (["--loss", "infonce"], None),
    "srcl_teacher_mean": (["--loss", "srcl", "--weight_norm", "mean"], TEACHER),
    "srcl_teacher_softmax_d2": (["--loss", "srcl", "--weight_norm", "softmax", "--delta", "2"], TEACHER),
    "srcl_teacher_softmax_d4": (["--loss", "srcl", "--weight_norm", "softmax", "--delta", "4"], TEACHER),
    "srcl_teacher_softmax_d8": (["--loss", "srcl", "--weight_norm", "softmax", "--delta", "8"], TEACHER),
    # the teacher alone for the whole run (alpha held at 1) instead of handing over to the student
    "srcl_teacher_mean_alpha1": (["--loss", "srcl", "--weight_norm", "mean", "--alpha_schedule", "constant"], TEACHER),
    "srcl_teacher_softmax_d4_alpha1": (
        ["--loss", "srcl", "--weight_norm", "softmax", "--delta", "4", "--alpha_schedule", "constant"], TEACHER),
    "srcl_self_mean": (["--loss", "srcl", "--weight_norm", "mean"], None),
    "srcl_self_softmax_d8": (["--loss", "srcl", "--weight_norm", "softmax", "--delta", "8"], None),
    "remove_0.2": (["--loss", "srcl", "--weight_norm", "mean", "--removal_threshold", "0.2"], TEACHER),
    "remove_0.5": (["--loss", "srcl", "--weight_norm", "mean", "--removal_threshold", "0.5"], TEACHER),
    "albef_md": (["--loss", "infonce", "--momentum_distillation"], None),
    "oracle": (["--loss", "infonce", "--oracle_false_negatives"], None),
    "srcl_weak_teacher_mean": (["--loss", "srcl", "--weight_norm", "mean"], WEAK_TEACHER),
    # the peers: other published answers to false negatives (SiscConfig's peer objectives), same warm start and budget
    # alpha 8 of at most K = 63: a negative with 10% of the similarity softmax keeps 0.23 of a weight (alpha 1: 0.92)
    "soft_infonce_teacher": (["--loss", "soft_infonce", "--soft_infonce_alpha", "8"], TEACHER),
    "soft_infonce_self": (["--loss", "soft_infonce", "--soft_infonce_alpha", "8"], None),
    "debiased_p0.02": (["--loss", "debiased", "--debiased_prior", "0.02"], None),
    "debiased_p0.15": (["--loss", "debiased", "--debiased_prior", "0.15"], None),
    # beta on the logits (cos / 0.072 for the warm start): 0.3 gives exp(4.2 cos), about as steep as SRCL's softmax
    # delta 8 weights (8 / exp(cos) falls by 3-8 per unit of cos) but up instead of down; prior 0: weighting alone
    "hard_negatives": (["--loss", "hard_negatives", "--debiased_prior", "0", "--hard_negative_beta", "0.3"], None),
    "siglip": (["--loss", "siglip"], None),
    "multi_positive": (["--loss", "multi_positive"], None),
    "label_smoothing_0.1": (["--loss", "infonce", "--label_smoothing", "0.1"], None),
}
# the peer comparison (benchmarks/README.md, "SRCL against its peers"): SRCL's main variants beside every peer
PEER_OBJECTIVES = ["infonce", "srcl_teacher_mean", "srcl_teacher_softmax_d8", "srcl_self_mean", "srcl_self_softmax_d8",
                   "soft_infonce_teacher", "soft_infonce_self", "debiased_p0.02", "debiased_p0.15", "hard_negatives",
                   "siglip", "multi_positive", "label_smoothing_0.1", "oracle"]
LOW_OBJECTIVES = ["infonce", "srcl_teacher_mean", "srcl_teacher_softmax_d4", "srcl_teacher_softmax_d8", "srcl_self_mean",
                  "srcl_self_softmax_d8", "oracle"]
# t_{0.975, n-1} for 95% intervals over n seeds
T_975 = {2: 12.706, 3: 4.303, 4: 3.182, 5: 2.776, 6: 2.571, 7: 2.447, 8: 2.365, 9: 2.306, 10: 2.262}


# The warm start of the committed results: the plain ViT read at [CLS] with ALBEF's ITM negatives (the small model's
# defaults then; students and teacher inherit its config).
PLAIN_WARM_START = ["--vision_conv_stem", "0", "--image_pooling", "cls", "--itm_random_negatives", "0",
                    "--word_prediction_loss_weight", "0"]


def common_arguments(args) -> list[str]:
    return [
        "--itm_loss_weight", "0", "--mlm_loss_weight", "0",
        "--per_device_batch_size", str(args.batch_size), "--learning_rate", str(args.learning_rate),
        "--warmup_steps", str(max(1, args.steps // 10)), "--num_workers", str(args.num_workers),
        "--report_to", "none", "--eval_split", "test", "--logging_steps", "5", "--diagnostics_steps", "1000000",
        "--data_cache_dir", args.data_cache_dir,
        *(["--shapes_num_train", str(args.shapes_num_train)] if args.shapes_num_train else []),
    ]


def train_once(folder: str, argv: list[str]) -> dict:
    """One pretraining run into `folder`, unless it finished before (its results.json exists); an unfinished one
    (stopped during training or its evaluation) is started again."""
    from sisc_train.tasks import pretraining as pretrain

    results = os.path.join(folder, "results.json")
    if not os.path.exists(results) or json.load(open(results)).get("metrics") in (None, {}):
        started = time.time()
        pretrain.main([*argv, "--output_dir", folder, "--overwrite_output_dir"])
        print(f"  finished {folder} in {time.time() - started:.0f} s", flush=True)
    with open(results) as handle:
        return json.load(handle)


def prepare_start_points(args) -> dict[str, str]:
    """{"warm_start": path, "teacher": path, "weak_teacher": path}: given, or trained once into <out>/runs."""
    warm = args.warm_start
    if warm is None:
        warm = os.path.join(args.out, "runs", "warm_start")
        # 2 epochs: the warm start of the committed results (the main job's length when the benchmark ran)
        train_once(warm, [*PLAIN_WARM_START, "--loss", "infonce", "--num_epochs", "2", "--report_to", "none",
                          "--data_cache_dir", args.data_cache_dir, "--num_workers", str(args.num_workers)])
    teacher = args.teacher
    if teacher is None:
        teacher = os.path.join(args.out, "runs", "teacher")
        train_once(teacher, ["--model_name_or_path", warm, "--loss", "infonce", "--mlm_loss_weight", "0",
                             "--max_steps", str(args.teacher_steps), "--learning_rate", str(args.learning_rate),
                             "--report_to", "none", "--data_cache_dir", args.data_cache_dir,
                             "--num_workers", str(args.num_workers)])
    return {"warm_start": warm, TEACHER: teacher, WEAK_TEACHER: warm}


def run_setting(args, setting: str, start: dict[str, str], objectives: list[str]) -> dict[str, list[dict]]:
    """{objective: [results.json of each seed]} for one false-negative setting."""
    base = [*common_arguments(args), "--shapes_preset", setting, "--model_name_or_path", start["warm_start"]]
    results: dict[str, list[dict]] = {name: [] for name in objectives}
    for seed in args.seeds:  # objectives interleaved per seed: an interrupted run leaves comparable results
        for name in objectives:
            extra, teacher = OBJECTIVES[name]
            argv = [*base, *extra, "--seed", str(seed), "--max_steps", str(args.steps)]
            if teacher:
                argv += ["--teacher", start[teacher]]
            results[name].append(train_once(os.path.join(args.out, "runs", setting, name, f"seed{seed}"), argv))
    return results


def evaluate_start_points(args, start: dict[str, str], setting: str) -> dict[str, dict]:
    """Zero-shot metrics of the warm start and the teacher on this setting's test split (teacher quality)."""
    from sisc_train.evaluation.retrieval import main as evaluate

    metrics = {}
    for kind in ("warm_start", TEACHER):
        path = os.path.join(args.out, "runs", setting, f"{kind}_eval.json")
        if not os.path.exists(path):
            evaluate(["--model", start[kind], "--shapes_preset", setting, "--rerank_k", "0", "--output_json", path,
                      "--data_cache_dir", args.data_cache_dir])
        with open(path) as handle:
            metrics[kind] = json.load(handle)["results"]["itc"]
    return metrics


def late_mean(history: list[dict], key: str) -> float:
    """Mean of a logged diagnostic over the second half of training (NaN when it was never logged)."""
    values = [row[key] for row in history[len(history) // 2 :] if key in row]
    return statistics.fmean(values) if values else math.nan


def mean_std(values: list[float]) -> tuple[float, float]:
    return statistics.fmean(values), (statistics.stdev(values) if len(values) > 1 else math.nan)


def summarise(results: dict[str, list[dict]]) -> dict[str, dict]:
    """Per objective: mean / std of every metric and diagnostic, and the seed-paired difference to InfoNCE."""
    table = {}
    baseline = results.get("infonce")
    for name, runs in results.items():
        row = {"seeds": len(runs)}
        for metric in METRICS:
            values = [run["metrics"][metric] for run in runs]
            row[metric] = dict(zip(("mean", "std"), mean_std(values)))
            if baseline and name != "infonce" and len(baseline) == len(runs):
                diffs = [v - b["metrics"][metric] for v, b in zip(values, baseline)]
                mean, std = mean_std(diffs)
                half = T_975.get(len(diffs), 1.96) * std / math.sqrt(len(diffs)) if len(diffs) > 1 else math.nan
                row[metric]["diff"] = mean
                row[metric]["ci95"] = [mean - half, mean + half]
        for key in DIAGNOSTICS:
            row[key] = statistics.fmean([late_mean(run["history"], key) for run in runs])
        table[name] = row
    return table


def format_markdown(setting: str, table: dict, teacher_metrics: dict) -> str:
    lines = [f"### Setting `{setting}`", ""]
    for kind, metrics in teacher_metrics.items():
        lines.append(f"- {kind.replace('_', ' ')} (zero-shot, before any student step): TR mAP@R {metrics['tr_map_r']:.2f}, IR mAP@R {metrics['ir_map_r']:.2f}, "
                     f"TR R@1-any {metrics['tr_r1_any']:.2f}, IR R@1-any {metrics['ir_r1_any']:.2f}")
    lines += ["", "| objective | " + " | ".join(METRICS) + " |", "| --- |" + " --- |" * len(METRICS)]
    for name, row in table.items():
        cells = []
        for metric in METRICS:
            cell = f"{row[metric]['mean']:.2f} ± {row[metric]['std']:.2f}"
            if "diff" in row[metric]:
                low, high = row[metric]["ci95"]
                cell += f" ({row[metric]['diff']:+.2f} [{low:+.2f}, {high:+.2f}])"
            cells.append(cell)
        lines.append(f"| {name} | " + " | ".join(cells) + " |")
    lines += ["", "Regulation weights over the second half of training (negatives of an anchor; in-batch true false "
              "negatives from the dataset's ground truth):", "",
              "| objective | weight std | mean weight of true false negatives | share of them under 0.5 | false-negative share of pairs |",
              "| --- | --- | --- | --- | --- |"]
    for name, row in table.items():
        lines.append(f"| {name} | " + " | ".join(f"{row[key]:.3f}" for key in DIAGNOSTICS) + " |")
    return "\n".join(lines)


def plot(summaries: dict, path: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    metrics = ("tr_map_r", "ir_map_r", "tr_r1_any", "ir_r1_any")
    fig, axes = plt.subplots(len(summaries), len(metrics), figsize=(4.2 * len(metrics), 3.6 * len(summaries)), squeeze=False)
    for row, (setting, table) in enumerate(summaries.items()):
        names = list(table)
        for col, metric in enumerate(metrics):
            ax = axes[row][col]
            means = [table[n][metric]["mean"] for n in names]
            stds = [0.0 if math.isnan(table[n][metric]["std"]) else table[n][metric]["std"] for n in names]
            colours = ["tab:gray" if n == "infonce" else "tab:green" if n == "oracle" else "tab:blue" for n in names]
            ax.bar(range(len(names)), means, yerr=stds, color=colours, capsize=3)
            if "infonce" in table:
                ax.axhline(table["infonce"][metric]["mean"], color="tab:gray", linestyle="--", linewidth=1)
            ax.set_xticks(range(len(names)))
            ax.set_xticklabels(names, rotation=70, ha="right", fontsize=7)
            ax.set_title(f"{setting}: {metric}", fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=90)
    plt.close(fig)


def main(argv=None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--settings", nargs="+", default=["low", "high"], help="shapes presets")
    parser.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2])
    parser.add_argument("--objectives", nargs="+", default=list(OBJECTIVES), choices=[*OBJECTIVES, "peers"],
                        help="objectives to train ('peers': the peer comparison's list)")
    parser.add_argument("--low_objectives", nargs="+", choices=[*OBJECTIVES, "peers"], default=LOW_OBJECTIVES,
                        help="a shorter list for the 'low' setting (the main comparisons)")
    parser.add_argument("--steps", type=int, default=100, help="optimiser steps of every student")
    parser.add_argument("--warm_start", default=None, help="checkpoint every student starts from (default: trained)")
    parser.add_argument("--teacher", default=None, help="frozen teacher checkpoint (default: trained)")
    parser.add_argument("--teacher_steps", type=int, default=300, help="steps of the teacher beyond the warm start")
    parser.add_argument("--batch_size", type=int, default=64)
    parser.add_argument("--learning_rate", type=float, default=3e-4)
    parser.add_argument("--num_workers", type=int, default=0)
    parser.add_argument("--shapes_num_train", type=int, default=None, help="override the training images (quick tests)")
    parser.add_argument("--data_cache_dir", default="data_cache/shapes")
    parser.add_argument("--out", default=os.path.join(ROOT, "benchmarks", "results", "false_negatives"))
    args = parser.parse_args(argv)
    for name in ("objectives", "low_objectives"):
        if getattr(args, name) and "peers" in getattr(args, name):
            setattr(args, name, [*PEER_OBJECTIVES, *[o for o in getattr(args, name) if o not in (*PEER_OBJECTIVES, "peers")]])
    started = time.time()
    start = prepare_start_points(args)
    summaries, teachers, markdown = {}, {}, []
    for setting in args.settings:
        print(f"\n=== setting {setting} ===", flush=True)
        objectives = args.low_objectives if setting == "low" and args.low_objectives else args.objectives
        objectives = ["infonce", *[name for name in objectives if name != "infonce"]]
        results = run_setting(args, setting, start, objectives)
        teachers[setting] = evaluate_start_points(args, start, setting)
        summaries[setting] = summarise(results)
        markdown.append(format_markdown(setting, summaries[setting], teachers[setting]))
    header = (f"False-negative benchmark: {len(args.seeds)} seeds ({', '.join(map(str, args.seeds))}), {args.steps} steps of "
              f"batch {args.batch_size} from the warm start `{start['warm_start']}` (teacher `{start[TEACHER]}`), ITC only. "
              "Cells: mean ± std over seeds (difference to InfoNCE paired by seed [95% t-interval]); test split, percent.")
    report = header + "\n\n" + "\n\n".join(markdown) + "\n"
    print("\n" + report)
    os.makedirs(args.out, exist_ok=True)
    with open(os.path.join(args.out, "summary.md"), "w") as handle:
        handle.write(report)
    with open(os.path.join(args.out, "summary.json"), "w") as handle:
        json.dump({"arguments": vars(args), "teachers": teachers, "summaries": summaries}, handle, indent=2)
    plot(summaries, os.path.join(args.out, "summary.png"))
    print(f"written: {args.out}/summary.md, summary.json, summary.png ({time.time() - started:.0f} s)")
    return summaries


if __name__ == "__main__":
    main()
