"""Retrieval evaluation speed: items encoded per second, and the cost of ITM re-ranking against ITC ranking alone.

    python benchmarks/eval_speed.py                            # the small default model (random weights) on shapes
    python benchmarks/eval_speed.py --model outputs/sisc-small --rerank_k 16 64 --rounds 3
    python benchmarks/eval_speed.py --scale 250 1000 5000 --rerank_k 16 256 --max_pairs 500000   # COCO scale, generated

All variants run in the same process on the same data, interleaved over `--rounds` rounds (so machine noise hits
them alike); the table gives medians and the ratio of each full evaluation to the ITC-only one. Results also go to
benchmarks/results/eval_speed.json.

`--scale N ...` instead runs the whole evaluation (`evaluate_retrieval`: encoding, ITC ranking and metrics, ITM
re-ranking of each query's top k in both directions) on generated sets of N images with 5 captions each (COCO's 5k
test split is N = 5,000: 25,000 captions), for every k of `--rerank_k` (and k = 0, ITC only), every configuration
once per round over `--rounds` rounds in a rotating order: the median time of each part and the largest peak memory
above the model (`PeakMemory` of train_speed.py). Runs with more than `--max_pairs` fused
pairs ((N + 5N) x k) are not run but projected from the measured cost per fused pair, which the run checks is
constant (cost linear in N x k). The fused-pair FLOPs of the small and the paper's base model are counted
(`torch.utils.flop_counter`) for a projection to the base model. Results go to benchmarks/results/eval_scale.json.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import time

import torch

from sisc_train.evaluation.retrieval import RetrievalSet, encode_set, evaluate_retrieval, itm_rerank, load_retrieval_set
from sisc_train.evaluation.retrieval_metrics import retrieval_metrics

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))  # where results are written


def load_model(path: str | None, device: str):
    from transformers import AutoProcessor

    from configuration_sisc import SiscConfig
    from modeling_sisc import SiscModel
    from processing_sisc import build_default_processor

    if path:
        return SiscModel.from_pretrained(path).to(device).eval(), AutoProcessor.from_pretrained(path, trust_remote_code=True)
    processor = build_default_processor(image_size=64)
    torch.manual_seed(0)
    return SiscModel(SiscConfig.small(vocab_size=len(processor.tokenizer))).to(device).eval(), processor


CAPTIONS_PER_IMAGE = 5  # COCO's


def generated_set(n_images: int, image_size: int, words: list[str], seed: int = 0) -> RetrievalSet:
    """N noise images and 5 captions of 8-14 random words each: the shapes of a COCO-style test split (speed does not
    depend on the content)."""
    import numpy as np
    from PIL import Image

    rng = np.random.default_rng(seed)
    images = [Image.fromarray(rng.integers(0, 256, (image_size, image_size, 3), dtype=np.uint8)) for _ in range(n_images)]
    captions, owners = [], []
    for image in range(n_images):
        for _ in range(CAPTIONS_PER_IMAGE):
            captions.append(" ".join(rng.choice(words, size=int(rng.integers(8, 15)))))
            owners.append(image)
    return RetrievalSet(images, captions, owners, description=f"generated: {n_images} images x {CAPTIONS_PER_IMAGE} captions")


def fused_pair_flops(config, text_length: int) -> int:
    """FLOPs of one ITM forward (fusion encoder + head) of one image-text pair, counted on a meta-device model."""
    from torch.utils.flop_counter import FlopCounterMode

    from modeling_sisc import SiscModel

    with torch.device("meta"):  # shapes only: the flop counter needs no real weights or values
        model = SiscModel(config)
    vision = config.vision_config
    tokens = (vision.image_size // vision.patch_size) ** 2 + 1
    text = torch.zeros(1, text_length, config.text_config.hidden_size, device="meta")
    image = torch.zeros(1, tokens, vision.hidden_size, device="meta")
    with FlopCounterMode(display=False) as counter:  # no padding mask: every text token counts (a mask reads values)
        model.get_itm_logits(attention_mask=None, text_hidden_states=text, image_hidden_states=image)
    return counter.get_total_flops()


def fused_pairs(n_images: int, n_captions: int, k: int) -> int:
    """Image-text pairs ITM re-ranking scores: each image's top-k captions and each caption's top-k images."""
    return n_images * min(k, n_captions) + n_captions * min(k, n_images)


def scale_study(model, processor, args) -> dict:
    """The whole evaluation on generated sets of growing size (see the module docstring)."""
    from configuration_sisc import SiscConfig
    from train_speed import ContentionMeter, PeakMemory, rotated, timed_region  # same folder

    words = [w for w in processor.tokenizer.get_vocab() if w.isalpha() and len(w) > 2] or ["word"]
    image_size = model.config.vision_config.image_size
    device = torch.device(args.device)
    sets, configs = {}, []
    for n_images in args.scale:
        sets[n_images] = generated_set(n_images, image_size, words)
        for k in [0, *args.rerank_k]:
            pairs = fused_pairs(n_images, len(sets[n_images].captions), k)
            if pairs > args.max_pairs:
                print(f"N={n_images}, k={k}: {pairs:,} fused pairs > --max_pairs {args.max_pairs:,}: projected, not run")
            else:
                configs.append((n_images, k, pairs))
    measured = {config: [] for config in configs}
    meter = ContentionMeter()
    for round_index in range(args.rounds):  # every configuration once per round, in a rotating order
        for n_images, k, pairs in rotated(configs, round_index):
            data = sets[n_images]
            with timed_region(), PeakMemory(device) as peak:
                started = time.perf_counter()
                results = evaluate_retrieval(model, processor, data, rerank_k=k, itm_batch_size=args.itm_batch_size,
                                             max_bad_fraction=None)
                total = time.perf_counter() - started
            timing = results["timing"]
            measured[(n_images, k, pairs)].append({"total_s": total, "encode_s": timing["encode_seconds"],
                                                   "rerank_s": timing.get("rerank_seconds", 0.0), "peak_memory_bytes": peak.peak_bytes})
            print(f"round {round_index + 1}: N={n_images}, k={k}: {total:.1f} s (encode {timing['encode_seconds']:.1f}, re-rank "
                  f"{timing.get('rerank_seconds', 0.0):.1f}); peak memory +{(peak.peak_bytes or 0) / 2**20:.0f} MiB")
    others = meter.others_share()
    runs = []
    for (n_images, k, pairs), values in measured.items():
        run = {"n_images": n_images, "n_captions": len(sets[n_images].captions), "k": k, "fused_pairs": pairs,
               "rounds": len(values)}
        for name in ("total_s", "encode_s", "rerank_s"):  # medians over the rounds
            run[name] = statistics.median(value[name] for value in values)
        peaks = [value["peak_memory_bytes"] for value in values if value["peak_memory_bytes"] is not None]
        run["peak_memory_bytes"] = max(peaks) if peaks else None
        run["itc_ranking_and_metrics_s"] = statistics.median(value["total_s"] - value["encode_s"] - value["rerank_s"] for value in values)
        if pairs:
            run["rerank_s_per_pair"] = run["rerank_s"] / pairs
        runs.append(run)
    per_pair = [run["rerank_s_per_pair"] for run in runs if run["k"] and run["fused_pairs"] >= 10_000]
    per_pair = per_pair or [run["rerank_s_per_pair"] for run in runs if run["k"]]
    seconds_per_pair = statistics.median(per_pair) if per_pair else None
    # the rest of an evaluation (encoding, ITC ranking) per item, from the largest ITC-only run
    itc_runs = [run for run in runs if run["k"] == 0]
    seconds_per_item = (itc_runs[-1]["total_s"] / (itc_runs[-1]["n_images"] + itc_runs[-1]["n_captions"])) if itc_runs else None
    coco = {"n_images": 5000, "n_captions": 25000}
    projections = {}
    for k in args.rerank_k:
        pairs = fused_pairs(coco["n_images"], coco["n_captions"], k)
        projections[k] = {"fused_pairs": pairs, "rerank_s": pairs * seconds_per_pair if seconds_per_pair else None,
                          "total_s": (pairs * seconds_per_pair + sum(coco.values()) * seconds_per_item)
                          if seconds_per_pair and seconds_per_item else None}
    text_length = 30  # ALBEF's retrieval captions are truncated at 30 tokens
    flops = {"small": fused_pair_flops(model.config, text_length), "base": fused_pair_flops(SiscConfig.base(), text_length)}
    return {"runs": runs, "other_processes_cpu_share": others, "rerank_seconds_per_fused_pair": seconds_per_pair,
            "rerank_seconds_per_fused_pair_spread": [min(per_pair), max(per_pair)] if per_pair else None,
            "seconds_per_item_without_rerank": seconds_per_item, "coco_5k": coco, "coco_5k_projection": projections,
            "fused_pair_flops_text30": flops}


def print_scale(study: dict) -> None:
    print(f"\n{'N images':>8} {'captions':>8} {'k':>4} {'fused pairs':>12} {'total s':>8} {'encode s':>8} {'ITC s':>6} "
          f"{'re-rank s':>9} {'us/pair':>8} {'peak MiB':>9}")
    for run in study["runs"]:
        per_pair = f"{1e6 * run['rerank_s_per_pair']:.1f}" if run.get("rerank_s_per_pair") else "-"
        peak = f"{run['peak_memory_bytes'] / 2**20:.0f}" if run["peak_memory_bytes"] is not None else "n/a"
        print(f"{run['n_images']:>8} {run['n_captions']:>8} {run['k']:>4} {run['fused_pairs']:>12,} {run['total_s']:>8.1f} "
              f"{run['encode_s']:>8.1f} {run['itc_ranking_and_metrics_s']:>6.1f} {run['rerank_s']:>9.1f} {per_pair:>8} {peak:>9}")
    if study["rerank_seconds_per_fused_pair"]:
        low, high = study["rerank_seconds_per_fused_pair_spread"]
        print(f"re-ranking costs {1e6 * study['rerank_seconds_per_fused_pair']:.1f} us per fused pair (median over runs; "
              f"range {1e6 * low:.1f}-{1e6 * high:.1f}: constant = linear in N x k)")
        for k, projection in study["coco_5k_projection"].items():
            print(f"COCO 5k (5,000 x 25,000), k={k}: {projection['fused_pairs']:,} fused pairs, re-ranking "
                  f"{projection['rerank_s'] / 60:.1f} min, whole evaluation {projection['total_s'] / 60:.1f} min (projected)")
    others = study["other_processes_cpu_share"]
    print("other processes used " + ("n/a" if others is None else f"{100 * others:.1f}%") + " of the machine's CPU (0% = quiet machine)")
    flops = study["fused_pair_flops_text30"]
    print(f"FLOPs per fused pair (30 text tokens): small {flops['small'] / 1e6:.1f} MFLOP, base {flops['base'] / 1e9:.2f} GFLOP "
          f"({flops['base'] / flops['small']:.0f}x)")


def timed(fn):
    start = time.perf_counter()
    result = fn()
    return result, time.perf_counter() - start


def main(argv=None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", help="a SISC checkpoint (default: the small default model, random weights)")
    parser.add_argument("--data", default="shapes")
    parser.add_argument("--split", default=None, help="default: 'test', or the whole file for a data file")
    parser.add_argument("--max_images", type=int, default=None)
    parser.add_argument("--rerank_k", type=int, nargs="+", default=[16])
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--itm_batch_size", type=int, default=256)
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--scale", type=int, nargs="+", default=None,
                        help="instead of --data: generated sets of these numbers of images (5 captions each)")
    parser.add_argument("--max_pairs", type=int, default=2_000_000, help="--scale: larger runs are projected, not run")
    parser.add_argument("--output", default=None, help="default: benchmarks/results/eval_speed.json (eval_scale.json with --scale)")
    args = parser.parse_args(argv)
    args.output = args.output or os.path.join(ROOT, "benchmarks", "results", "eval_scale.json" if args.scale else "eval_speed.json")

    model, processor = load_model(args.model, args.device)
    if args.scale:
        print(f"model: {args.model or 'the small default model (random weights)'}; device {args.device}, torch threads {torch.get_num_threads()}")
        study = scale_study(model, processor, args)
        print_scale(study)
        study.update(device=args.device, torch_threads=torch.get_num_threads(), model=args.model or "small (random weights)")
        from train_speed import write_results  # same folder

        write_results(study, args.output)
        return study
    data = load_retrieval_set(args.data, args.split, max_images=args.max_images)
    n_images, n_captions = len(data.images), len(data.captions)
    print(f"{data.description}: {n_images} images, {n_captions} captions; device {args.device}, torch threads {torch.get_num_threads()}")

    times: dict[str, list[float]] = {"encode (embeddings only)": [], "encode (+ hidden states)": [], "itc ranking + metrics": []}
    times |= {f"itm re-rank top-{k} (both directions)": [] for k in args.rerank_k}
    for round_index in range(args.rounds):
        _, seconds = timed(lambda: encode_set(model, processor, data))
        times["encode (embeddings only)"].append(seconds)
        encoded, seconds = timed(lambda: encode_set(model, processor, data, keep_hidden=True))
        times["encode (+ hidden states)"].append(seconds)
        similarity, seconds = timed(lambda: encoded.image_embeds @ encoded.text_embeds.t())
        kept = encoded.data  # the readable items (unreadable images and empty captions are left out)
        _, metric_seconds = timed(lambda: retrieval_metrics(similarity, kept.caption_to_image, kept.relevance))
        times["itc ranking + metrics"].append(seconds + metric_seconds)
        for k in args.rerank_k:
            def rerank(k=k):
                by_image = itm_rerank(model, encoded, similarity, k, image_queries=True, batch_size=args.itm_batch_size)
                by_text = itm_rerank(model, encoded, similarity, k, image_queries=False, batch_size=args.itm_batch_size)
                return retrieval_metrics(by_image, kept.caption_to_image, kept.relevance, image_retrieval_similarity=by_text)

            _, seconds = timed(rerank)
            times[f"itm re-rank top-{k} (both directions)"].append(seconds)
        print(f"round {round_index + 1}/{args.rounds} done")

    median = {name: statistics.median(values) for name, values in times.items()}
    itc_total = median["encode (embeddings only)"] + median["itc ranking + metrics"]
    print(f"\n{'step':<40}{'median s':>10}{'min s':>10}{'max s':>10}")
    for name, values in times.items():
        print(f"{name:<40}{median[name]:>10.3f}{min(values):>10.3f}{max(values):>10.3f}")
    items = n_images + n_captions
    throughput = {
        "items_per_second": items / median["encode (embeddings only)"],
        "items_per_second_with_hidden_states": items / median["encode (+ hidden states)"],
    }
    print(f"\nencoding: {throughput['items_per_second']:.0f} items/s ({n_images} images + {n_captions} captions, "
          f"batched, inference mode); keeping hidden states for re-ranking: {throughput['items_per_second_with_hidden_states']:.0f} items/s")
    ratios = {}
    print(f"ITC-only evaluation: {itc_total:.2f} s")
    for k in args.rerank_k:
        total = median["encode (+ hidden states)"] + median["itc ranking + metrics"] + median[f"itm re-rank top-{k} (both directions)"]
        pairs = k * (n_images + n_captions)
        ratios[k] = total / itc_total
        print(f"with ITM re-ranking of the top {k}: {total:.2f} s = {ratios[k]:.1f}x ITC only "
              f"({pairs} fused pairs, {pairs / median[f'itm re-rank top-{k} (both directions)']:.0f} pairs/s)")

    result = {
        "data": data.description, "num_images": n_images, "num_captions": n_captions, "device": args.device,
        "torch_threads": torch.get_num_threads(), "rounds": args.rounds, "seconds": times, "median_seconds": median,
        "throughput": throughput, "itc_only_seconds": itc_total, "rerank_cost_ratio": ratios,
    }
    os.makedirs(os.path.dirname(args.output), exist_ok=True)
    with open(args.output, "w") as handle:
        json.dump(result, handle, indent=2)
    print(f"results written to {args.output}")
    return result


if __name__ == "__main__":
    main()
