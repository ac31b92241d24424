"""What does a SISC checkpoint's image tower see, and can its fusion encoder learn to match images and captions?

    python benchmarks/image_grounding.py --model outputs/sisc-small

1. Linear probes: the image encoder's pooled features ([CLS], the mean and the maximum of the patch states; the
   contrastive embedding reads [CLS] or the maximum, `SiscConfig.image_pooling`) of the embedded NLVR
   scenes (dev + test, both images: 1,600 images with known contents), standardised; a logistic regression per
   target is fitted on 75% of the images and scored on the rest, next to always guessing the training majority.
   Targets: "<colour> object present", "<shape> present", and the number of objects.
2. The checkpoint's own ITM head, as pretrained, on the held-out test split: each caption with its image and with
   one image it is false of, the most ITC-similar such image of its batch of 64 (the pretraining's hard negative)
   or one at random. Printed: accuracy over the 2 x 1,500 pairs (chance 50%), and how often the true pair scores
   above the negative. Then how often the negatives pretraining's ITM sampler favours are false negatives (the
   caption is true of that image too): the most ITC-similar other image of the batch, every one the similarity
   scores at or above the pair (what `itm_skip_negatives_above_pair` leaves out), and one at random.
3. Image-text matching from the checkpoint's fusion encoder: a copy of the model trains its fusion encoder and ITM
   head alone (towers frozen) on the embedded captions, each caption with its image and with one image it is false
   of, picked at random or (as in pretraining) the most ITC-similar such image of the batch. Printed: accuracy over
   the last steps (chance 50%).

Results also go to benchmarks/results/image_grounding.json.
"""

from __future__ import annotations

import argparse
import copy
import json
import os
import random

import torch
import torch.nn.functional as F

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))  # where results are written


def pooled_image_features(model, processor, images, batch_size: int = 200) -> torch.Tensor:
    features = []
    with torch.no_grad():
        for start in range(0, len(images), batch_size):
            pixels = processor(images=images[start : start + batch_size], return_tensors="pt")["pixel_values"]
            states = model.encode_image(pixels)[0].last_hidden_state
            patches = states[:, 1:]
            features.append(torch.cat([states[:, 0], patches.mean(dim=1), patches.amax(dim=1)], dim=-1))
    features = torch.cat(features)
    return (features - features.mean(0)) / (features.std(0) + 1e-6)


def probe_accuracy(features: torch.Tensor, targets: list[int], train_fraction: float = 0.75) -> tuple[float, float]:
    """(held-out accuracy of an L2-regularised logistic regression, accuracy of the training majority class)."""
    y = torch.tensor(targets)
    split = int(train_fraction * len(y))
    x_train, y_train, x_test, y_test = features[:split], y[:split], features[split:], y[split:]
    classes = int(y.max()) + 1
    weight = torch.zeros(features.shape[1], classes, requires_grad=True)
    bias = torch.zeros(classes, requires_grad=True)
    optimizer = torch.optim.LBFGS([weight, bias], max_iter=300)

    def closure():
        optimizer.zero_grad()
        loss = F.cross_entropy(x_train @ weight + bias, y_train) + 1e-3 * weight.pow(2).sum()
        loss.backward()
        return loss

    optimizer.step(closure)
    with torch.no_grad():
        accuracy = ((x_test @ weight + bias).argmax(1) == y_test).float().mean().item()
    majority = (y_test == torch.bincount(y_train, minlength=classes).argmax()).float().mean().item()
    return 100 * accuracy, 100 * majority


def run_probes(model, processor, cache_dir: str) -> list[dict]:
    from sisc_train.data.tasks import load_task_data
    from sisc_train.synthetic.shapes_tasks import ShapesTaskConfig

    config = ShapesTaskConfig()
    data = load_task_data("nlvr", "shapes", cache_dir)  # the fine-tuning data's cache; dev / test scenes
    images, scenes = [], []
    for split in ("dev", "test"):
        images += list(data[split]["left_image"]) + list(data[split]["right_image"])
        scenes += [json.loads(s) for s in list(data[split]["left_scene"]) + list(data[split]["right_scene"])]
    features = pooled_image_features(model, processor, images)
    targets = {f"{c} object present": [int(any(o["color"] == c for o in s["objects"])) for s in scenes] for c in config.colors()}
    targets.update({f"{h} present": [int(any(o["shape"] == h for o in s["objects"])) for s in scenes] for h in config.shapes()})
    targets["number of objects"] = [len(s["objects"]) - config.min_objects for s in scenes]
    rows = []
    for name, y in targets.items():
        accuracy, majority = probe_accuracy(features, y)
        rows.append({"target": name, "probe_accuracy": accuracy, "majority_accuracy": majority})
        print(f"  {name:<28} probe {accuracy:5.1f}%   majority {majority:5.1f}%", flush=True)
    return rows


def itm_as_pretrained(model, processor, pairs, batch: int = 64, seed: int = 0) -> tuple[list[dict], dict]:
    """The checkpoint's ITM head on `pairs` (a shapes split), against ITC-hard and random negatives, and how many
    of the negatives pretraining would draw are false negatives (module doc, parts 2 and 3)."""
    from sisc_train.synthetic.shapes import caption_matches

    facts, scenes, image_ids = list(pairs["caption_facts"]), list(pairs["scene"]), list(pairs["image_id"])
    order = list(range(len(pairs)))
    random.Random(seed).shuffle(order)
    scores = {"hard": [], "random": []}  # per caption: (P(match) of the true pair, P(match) of the negative)
    # per kind of negative: [how many the caption is true of, how many]
    false_negatives = {"most_similar": [0, 0], "scored_at_or_above_the_pair": [0, 0], "random": [0, 0]}
    rng = random.Random(seed)
    count_rng = random.Random(seed + 1)  # its own draws: counting leaves the random negatives above as they were
    with torch.no_grad():
        for start in range(0, len(order), batch):
            rows = order[start : start + batch]
            inputs = processor(text=[pairs[i]["caption"] for i in rows], images=[pairs[i]["image"] for i in rows],
                               return_tensors="pt")
            text = model.get_text_features(inputs["input_ids"], inputs["attention_mask"])
            image = model.get_image_features(inputs["pixel_values"])
            similarity = (text @ image.t()).tolist()
            for a, i in enumerate(rows):  # the batch's other images, as pretraining's ITM sampler sees them
                others = [k for k in range(len(rows)) if image_ids[rows[k]] != image_ids[i]]
                if not others:
                    continue
                picks = {"most_similar": [max(others, key=lambda k: similarity[a][k])],
                         "scored_at_or_above_the_pair": [k for k in others if similarity[a][k] >= similarity[a][a]],
                         "random": [count_rng.choice(others)]}
                for kind, ks in picks.items():
                    false_negatives[kind][0] += sum(caption_matches(facts[i], scenes[rows[k]]) for k in ks)
                    false_negatives[kind][1] += len(ks)
            for kind in scores:
                negatives = []
                for a, i in enumerate(rows):
                    false_of = [k for k in range(len(rows)) if not caption_matches(facts[i], scenes[rows[k]])]
                    if not false_of:
                        negatives.append(None)
                    elif kind == "hard":
                        negatives.append(max(false_of, key=lambda k: similarity[a][k]))
                    else:
                        negatives.append(rng.choice(false_of))
                keep = [a for a, k in enumerate(negatives) if k is not None]
                images = torch.cat([inputs["pixel_values"][keep], inputs["pixel_values"][[negatives[a] for a in keep]]])
                ids, mask = inputs["input_ids"][keep].repeat(2, 1), inputs["attention_mask"][keep].repeat(2, 1)
                match = model.get_itm_logits(ids, mask, images).softmax(-1)[:, 1]
                scores[kind] += list(zip(match[: len(keep)].tolist(), match[len(keep):].tolist()))
    results = []
    for kind, pairs_scored in scores.items():
        accuracy = 100 * sum((p > 0.5) + (n <= 0.5) for p, n in pairs_scored) / (2 * len(pairs_scored))
        ranked = 100 * sum(p > n for p, n in pairs_scored) / len(pairs_scored)
        results.append({"negatives": kind, "captions": len(pairs_scored), "accuracy": accuracy,
                        "true_pair_scores_higher": ranked})
        print(f"  {kind:<6} negatives: accuracy {accuracy:.1f}%, the true pair scores higher for {ranked:.1f}% of "
              f"{len(pairs_scored)} captions", flush=True)
    print(f"false negatives among a caption's other images of its batch of {batch} (the caption is true of them too):")
    shares = {}
    for kind, (true_of, total) in false_negatives.items():
        shares[kind] = {"false_negatives": true_of, "negatives": total, "percent": 100 * true_of / max(total, 1)}
        print(f"  {kind.replace('_', ' '):<28} {shares[kind]['percent']:5.1f}% of {total}", flush=True)
    return results, shares


def itm_learning(model, processor, negatives: str, steps: int, batch: int, cache_dir: str, seed: int = 0) -> dict:
    """Train a copy's fusion encoder + ITM head on (caption, its image) vs (caption, an image it is false of)."""
    from sisc_train.synthetic.shapes import caption_matches, load_shapes_dataset

    pairs = load_shapes_dataset(cache_dir=cache_dir)["train"]
    captions, scenes, facts = list(pairs["caption"]), list(pairs["scene"]), list(pairs["caption_facts"])
    student = copy.deepcopy(model).train()
    trainable = [p for n, p in student.named_parameters() if n.startswith(("fusion_model.", "itm_head."))]
    for param in student.parameters():
        param.requires_grad_(False)
    for param in trainable:
        param.requires_grad_(True)
    optimizer = torch.optim.AdamW(trainable, lr=1e-3)
    rng = random.Random(seed)
    history = []
    for _ in range(steps):
        rows = rng.sample(range(len(pairs)), 4 * batch if negatives == "hard" else batch)
        anchors = rows[:batch]
        if negatives == "random":
            chosen = []
            for i in anchors:
                j = rng.randrange(len(pairs))
                while caption_matches(facts[i], scenes[j]):
                    j = rng.randrange(len(pairs))
                chosen.append(j)
        else:  # the most ITC-similar image of the batch that the caption is false of
            pool_inputs = processor(text=[captions[i] for i in anchors], images=[pairs[j]["image"] for j in rows],
                                    return_tensors="pt")
            with torch.no_grad():
                text = student.get_text_features(pool_inputs["input_ids"], pool_inputs["attention_mask"])
                image = student.get_image_features(pool_inputs["pixel_values"])
            similarity = text @ image.t()
            chosen = []
            for a, i in enumerate(anchors):
                order = similarity[a].argsort(descending=True).tolist()
                chosen.append(next((rows[k] for k in order if not caption_matches(facts[i], scenes[rows[k]])), rows[-1]))
        inputs = processor(text=[captions[i] for i in anchors] * 2,
                           images=[pairs[i]["image"] for i in anchors] + [pairs[j]["image"] for j in chosen],
                           return_tensors="pt")
        logits = student.get_itm_logits(inputs["input_ids"], inputs["attention_mask"], inputs["pixel_values"])
        labels = torch.tensor([1] * batch + [0] * batch)
        loss = F.cross_entropy(logits, labels)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        history.append(((logits.argmax(1) == labels).float().mean().item(), loss.item()))
    tail = history[-max(steps // 4, 1):]
    result = {"negatives": negatives, "steps": steps, "batch": batch,
              "accuracy_last_quarter": 100 * sum(h[0] for h in tail) / len(tail),
              "loss_last_quarter": sum(h[1] for h in tail) / len(tail)}
    print(f"  {negatives:<6} negatives: accuracy {result['accuracy_last_quarter']:.1f}% (loss "
          f"{result['loss_last_quarter']:.3f}) over the last {len(tail)} of {steps} steps", flush=True)
    return result


def main(argv=None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", default="outputs/sisc-small")
    parser.add_argument("--itm_steps", type=int, default=60, help="0 skips the image-text matching part")
    parser.add_argument("--itm_batch", type=int, default=32)
    parser.add_argument("--data_cache_dir", default="data_cache/shapes")
    parser.add_argument("--out", default=os.path.join(ROOT, "benchmarks", "results", "image_grounding.json"))
    args = parser.parse_args(argv)
    if args.itm_steps < 0 or args.itm_batch < 1:
        parser.error("--itm_steps must be >= 0 and --itm_batch >= 1")

    from modeling_sisc import SiscModel
    from sisc_train.data.tasks import load_processor

    torch.manual_seed(0)
    model = SiscModel.from_pretrained(args.model).eval()
    processor = load_processor(args.model)
    print(f"linear probes of {args.model}'s pooled image features (embedded NLVR scenes, 25% held out):", flush=True)
    probes = run_probes(model, processor, args.data_cache_dir)
    print("the checkpoint's ITM head on the test split (chance 50%):", flush=True)
    from sisc_train.synthetic.shapes import load_shapes_dataset

    itm_pretrained, false_negatives = itm_as_pretrained(model, processor, load_shapes_dataset(cache_dir=args.data_cache_dir)["test"])
    itm = []
    if args.itm_steps > 0:  # 0: the probes only
        print(f"image-text matching, fusion encoder + ITM head trained alone ({args.itm_steps} steps, chance 50%):", flush=True)
        itm = [itm_learning(model, processor, kind, args.itm_steps, args.itm_batch, args.data_cache_dir) for kind in ("random", "hard")]
    result = {"model": args.model, "probes": probes, "itm_pretrained": itm_pretrained,
              "false_negatives_among_negatives": false_negatives, "itm": itm}
    os.makedirs(os.path.dirname(args.out), exist_ok=True)
    with open(args.out, "w") as handle:
        json.dump(result, handle, indent=2)
    return result


if __name__ == "__main__":
    main()
