"""Retrieval evaluation speed: items encoded per second, and the cost of ITM re-ranking against ITC ranking alone.

    python benchmarks/eval_speed.py                            # the small default model (random weights) on shapes
    python benchmarks/eval_speed.py --model outputs/sisc-small --rerank_k 16 64 --rounds 3

All variants run in the same process on the same data, interleaved over `--rounds` rounds (so machine noise hits
them alike); the table gives medians and the ratio of each full evaluation to the ITC-only one. Results also go to
benchmarks/results/eval_speed.json.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import time

import torch

from sisc_train.evaluation.retrieval import encode_set, itm_rerank, load_retrieval_set
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
    parser.add_argument("--output", default=os.path.join(ROOT, "benchmarks", "results", "eval_speed.json"))
    args = parser.parse_args(argv)

    model, processor = load_model(args.model, args.device)
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
