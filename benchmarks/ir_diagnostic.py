"""Why text -> image retrieval (IR) stays flat on the shapes data for every objective, the oracle included.

    python benchmarks/ir_diagnostic.py --setting high \
        --checkpoints warm_start=benchmarks/results/peers/runs/warm_start teacher=benchmarks/results/peers/runs/teacher \
                      infonce=benchmarks/results/peers/runs/high/infonce/seed0 oracle=benchmarks/results/peers/runs/high/oracle/seed0

Two measurements:

1. **False negatives per direction**, over random training batches of the benchmark's size: for each caption anchor
   (the text -> image half of the loss, which trains IR) the other images of the batch that the caption is true of,
   and for each image anchor (image -> text, TR) the other captions true of it. The totals are equal (the same
   pairs seen from both sides); what differs is how they spread over anchors.
2. **What each tower's embeddings allow** (linear probe ceilings). For every test caption, a logistic-regression
   probe over a checkpoint's image embeddings, fitted on the training images labelled by whether the caption is true
   of them, ranks the test images: the IR mAP@R that the best linear text query could reach with these image
   embeddings. Likewise, for every test image a probe over the text embeddings of the training captions ranks the
   test captions: TR's ceiling given the text tower. Beside them the model's own TR / IR mAP@R. A model whose own IR
   sits near its image-probe ceiling is limited by its image tower, and no choice of negatives can move IR.

Output: a Markdown table on stdout and JSON under --out.
"""

from __future__ import annotations

import argparse
import json
import os
import time

import numpy as np
import torch
import torch.nn.functional as F

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def direction_false_negatives(relevance: np.ndarray, image_ids: np.ndarray) -> dict[str, float]:
    """In-batch false negatives of one batch seen from each side. `relevance` (captions x images of the batch's rows,
    bool): caption i is true of image j; pairs of the same image (`image_ids`) are not negatives. Returns per side the
    mean count per anchor and the share of anchors with at least one."""
    false_negative = relevance & (image_ids[:, None] != image_ids[None, :])
    per_caption, per_image = false_negative.sum(axis=1), false_negative.sum(axis=0)
    return {
        "caption_anchor_mean": float(per_caption.mean()),
        "caption_anchor_share_with_any": float((per_caption > 0).mean()),
        "image_anchor_mean": float(per_image.mean()),
        "image_anchor_share_with_any": float((per_image > 0).mean()),
        "pairs_share": float(false_negative.sum() / max((image_ids[:, None] != image_ids[None, :]).sum(), 1)),
    }


def batch_statistics(split, batch_size: int, num_batches: int, seed: int = 0) -> dict[str, float]:
    """`direction_false_negatives` averaged over `num_batches` random batches of a shapes split."""
    from sisc_train.synthetic.shapes import relevance_matrix

    facts, scenes, ids = (np.asarray(split[name], dtype=object) for name in ("caption_facts", "scene", "image_id"))
    ids = ids.astype(np.int64)
    rng = np.random.default_rng(seed)
    rows = []
    for _ in range(num_batches):
        idx = rng.choice(len(ids), size=min(batch_size, len(ids)), replace=False)
        rows.append(direction_false_negatives(relevance_matrix(list(facts[idx]), list(scenes[idx])), ids[idx]))
    return {key: float(np.mean([row[key] for row in rows])) for key in rows[0]}


def fit_probes(features: torch.Tensor, labels: torch.Tensor, steps: int = 300, lr: float = 0.05,
               weight_decay: float = 1e-4) -> tuple[torch.Tensor, torch.Tensor]:
    """One logistic-regression probe per row of `labels` (queries x items, bool) over the items' `features` (items x
    d), fitted jointly by full-batch Adam; positives and negatives weigh half each per query (classes are very
    unbalanced). Returns (weight (queries x d), bias (queries,))."""
    features, labels = features.clone(), labels.float()  # clones: the encoders' outputs are inference-mode tensors
    positives = labels.sum(dim=1, keepdim=True).clamp(min=1)
    negatives = (labels.shape[1] - labels.sum(dim=1, keepdim=True)).clamp(min=1)
    balance = torch.where(labels > 0, 0.5 / positives, 0.5 / negatives)
    weight = torch.zeros(labels.shape[0], features.shape[1], requires_grad=True)
    bias = torch.zeros(labels.shape[0], requires_grad=True)
    optimizer = torch.optim.Adam([weight, bias], lr=lr, weight_decay=weight_decay)
    for _ in range(steps):
        optimizer.zero_grad()
        logits = weight @ features.t() + bias[:, None]
        loss = (F.binary_cross_entropy_with_logits(logits, labels, reduction="none") * balance).sum(dim=1).mean()
        loss.backward()
        optimizer.step()
    return weight.detach(), bias.detach()


def embed_split(model, processor, split) -> dict:
    """Embeddings of a shapes split: one per distinct image (first appearance order) and one per caption row."""
    from sisc_train.evaluation.retrieval import encode_images, encode_texts

    first: dict[int, int] = {}
    for row, image_id in enumerate(split["image_id"]):
        first.setdefault(int(image_id), row)
    rows = list(first.values())
    images = list(split.select(rows)["image"])
    image_embeds, _, bad = encode_images(model, processor, images, desc="encode images")
    if bad:
        raise RuntimeError(f"unreadable images in the shapes split: {bad}")
    text_embeds, _, _ = encode_texts(model, processor, list(split["caption"]), desc="encode captions")
    order = {image_id: k for k, image_id in enumerate(first)}
    return {"images": image_embeds, "captions": text_embeds, "scenes": [split["scene"][r] for r in rows],
            "facts": list(split["caption_facts"]), "caption_to_image": [order[int(i)] for i in split["image_id"]]}


def probe_ceilings(model, processor, train, test, steps: int) -> dict[str, float]:
    """The model's own TR / IR mAP@R on `test` and the linear-probe ceilings of each tower (module docstring)."""
    from sisc_train.evaluation.retrieval_metrics import retrieval_metrics
    from sisc_train.synthetic.shapes import relevance_matrix

    fit, held_out = embed_split(model, processor, train), embed_split(model, processor, test)
    relevance = relevance_matrix(held_out["facts"], held_out["scenes"])  # test captions x test images
    own = retrieval_metrics(held_out["images"] @ held_out["captions"].t(), held_out["caption_to_image"], relevance)
    # IR: one probe per test caption over the training images; TR: one per test image over the training captions
    ir_weight, ir_bias = fit_probes(fit["images"], torch.as_tensor(relevance_matrix(held_out["facts"], fit["scenes"])), steps)
    tr_labels = torch.as_tensor(relevance_matrix(fit["facts"], held_out["scenes"])).t()
    tr_weight, tr_bias = fit_probes(fit["captions"], tr_labels, steps)
    ir_scores = ir_weight @ held_out["images"].t() + ir_bias[:, None]  # test captions x test images
    tr_scores = tr_weight @ held_out["captions"].t() + tr_bias[:, None]  # test images x test captions
    probed = retrieval_metrics(tr_scores, held_out["caption_to_image"], relevance, image_retrieval_similarity=ir_scores.t())
    return {"tr_map_r": own["tr_map_r"], "ir_map_r": own["ir_map_r"], "tr_r1_any": own["tr_r1_any"],
            "ir_r1_any": own["ir_r1_any"], "tr_map_r_text_probe": probed["tr_map_r"],
            "ir_map_r_image_probe": probed["ir_map_r"], "tr_r1_any_text_probe": probed["tr_r1_any"],
            "ir_r1_any_image_probe": probed["ir_r1_any"]}


def format_markdown(setting: str, batches: dict, ceilings: dict[str, dict]) -> str:
    lines = [
        f"### Setting `{setting}`", "",
        f"In-batch false negatives (training split, {batches['num_batches']} random batches of {batches['batch_size']}): "
        f"{100 * batches['pairs_share']:.1f}% of the negative pairs.", "",
        "| anchor (loss half) | false negatives per anchor | anchors with at least one |", "| --- | --- | --- |",
        f"| caption (text -> image: trains IR) | {batches['caption_anchor_mean']:.2f} | {100 * batches['caption_anchor_share_with_any']:.1f}% |",
        f"| image (image -> text: trains TR) | {batches['image_anchor_mean']:.2f} | {100 * batches['image_anchor_share_with_any']:.1f}% |",
        "", "| checkpoint | TR mAP@R | TR ceiling (probe on its text embeddings) | IR mAP@R | IR ceiling (probe on its image embeddings) |",
        "| --- | --- | --- | --- | --- |",
    ]
    for name, row in ceilings.items():
        lines.append(f"| {name} | {row['tr_map_r']:.2f} | {row['tr_map_r_text_probe']:.2f} | {row['ir_map_r']:.2f} | "
                     f"{row['ir_map_r_image_probe']:.2f} |")
    return "\n".join(lines)


def main(argv=None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--setting", default="high", help="shapes preset: 'low', 'high' or 'default'")
    parser.add_argument("--checkpoints", nargs="*", default=[], help="name=path of SISC checkpoints to probe")
    parser.add_argument("--batch_size", type=int, default=64)
    parser.add_argument("--num_batches", type=int, default=200)
    parser.add_argument("--probe_steps", type=int, default=300)
    parser.add_argument("--data_cache_dir", default="data_cache/shapes")
    parser.add_argument("--out", default=os.path.join(ROOT, "benchmarks", "results", "ir_diagnostic"))
    args = parser.parse_args(argv)
    from transformers import AutoProcessor

    from modeling_sisc import SiscModel
    from sisc_train.synthetic.shapes import ShapesConfig, load_shapes_dataset

    started = time.time()
    data = load_shapes_dataset(ShapesConfig.preset(args.setting), args.data_cache_dir)
    batches = {**batch_statistics(data["train"], args.batch_size, args.num_batches),
               "batch_size": args.batch_size, "num_batches": args.num_batches}
    ceilings = {}
    for item in args.checkpoints:
        name, _, path = item.partition("=")
        if not path:
            raise SystemExit(f"--checkpoints takes name=path, got {item!r}")
        model = SiscModel.from_pretrained(path).eval()
        processor = AutoProcessor.from_pretrained(path, trust_remote_code=True)
        ceilings[name] = probe_ceilings(model, processor, data["train"], data["test"], args.probe_steps)
        print(f"  {name}: {ceilings[name]}", flush=True)
    report = format_markdown(args.setting, batches, ceilings)
    print("\n" + report)
    os.makedirs(args.out, exist_ok=True)
    with open(os.path.join(args.out, f"{args.setting}.json"), "w") as handle:
        json.dump({"arguments": vars(args), "batches": batches, "ceilings": ceilings}, handle, indent=2)
    with open(os.path.join(args.out, f"{args.setting}.md"), "w") as handle:
        handle.write(report + "\n")
    print(f"written: {args.out}/{args.setting}.md, .json ({time.time() - started:.0f} s)")
    return {"batches": batches, "ceilings": ceilings}


if __name__ == "__main__":
    main()
