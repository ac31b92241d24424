"""Can the small default image tower learn shapes at all in the main job's budget, given the answer directly?

    python benchmarks/shape_learnability.py                     # 1,200 steps per variant, ~30 min on 2 cores
    python benchmarks/shape_learnability.py --variants vit_cls vit_patch4 --steps 600

The main job's image tower tells colours apart but hardly shapes (`benchmarks/image_grounding.py`). Before blaming
the pretraining objectives, this asks whether the tower could learn shapes in the main job's budget (936 steps of
batch 64) even with the cleanest signal there is: every training image of the embedded shapes dataset (5,000)
labelled with "a <colour> object is present" and "a <shape> is present" (multi-label, binary cross-entropy), the
same optimiser settings as the main job (AdamW, lr 1e-3, weight decay 0.01, 10% warm-up then cosine decay), from
random weights. Scored on the 500 held-out test images, next to always answering the training majority.

Variants (each trained alone from the same seed and the same batches):
    vit_cls    the main job's image tower before this benchmark (`SiscConfig.small(**PLAIN_IMAGE_TOWER)`: ViT, 64 px,
               linear patch projection of patch 8, 4 layers, width 128), read out at [CLS] as ALBEF's contrastive
               embedding is;
    vit_mean   the same tower read out by the mean of its patch states;
    vit_max    the same tower read out by the maximum over its patch states (what a query-driven cross-attention
               can do in the fusion encoder: pick the object it asks for);
    vit_patch4 patch 4 (256 patches, about 4x the compute), [CLS];
    hybrid_cls the same ViT with a convolutional stem in place of the patch projection (`vision_conv_stem`
               [32, 64, 128]: three 3x3 convolution + ReLU + 2x2 max-pool stages, the same 64 tokens), [CLS];
    hybrid_max that hybrid read out by the maximum over its patch states (`image_pooling="max"`);
    hybrid16_max the small model's tower now: the 16-32-64 stem, max read-out (`SMALL_IMAGE_TOWER`);
    cnn        a reference: a three-layer CNN with max pooling (32-64-128 channels, ~93k parameters), global max.

`--targets caption_words` trains on what pretraining has instead of labels: every (image, caption) pair with the
caption's words as its targets, by the main job's word-prediction loss (`SiscConfig.word_prediction_loss_weight`: a
softmax over the vocabulary against the caption's bag of words) with the tower alone; `--word_loss bce` takes the
multi-label form instead (binary cross-entropy per word, as for the labels), which teaches shapes much more slowly.
The towers are then scored by image_grounding.py's linear probes (`--grounding_probe` is implied), as a pretrained
tower is.
Results also go to benchmarks/results/shape_learnability.json.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import time

import torch
import torch.nn as nn
import torch.nn.functional as F

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))  # where results are written

VARIANTS = ("vit_cls", "vit_mean", "vit_max", "vit_patch4", "hybrid_cls", "hybrid_max", "hybrid16_max", "cnn")
DEFAULT_VARIANTS = ("vit_cls", "vit_max", "hybrid_cls", "hybrid_max", "cnn")  # vit_patch4 costs as much as four others


def caption_word_targets(split, processor):
    """(pixel values, 0/1 targets over the vocabulary: the words of its caption) of every pair of a shapes split."""
    from modeling_sisc import bag_of_words

    tokenizer = processor.tokenizer
    pixels = processor.image_processor(images=list(split["image"]), return_tensors="pt")["pixel_values"]
    tokens = tokenizer(list(split["caption"]), return_tensors="pt", padding=True)
    return pixels, bag_of_words(tokens["input_ids"], tokens["attention_mask"], len(tokenizer), tokenizer.all_special_ids)


def labelled_images(split, processor, colors, shapes):
    """(pixel values, 0/1 labels: colours then shapes) of each image of a shapes split once (rows are pairs)."""
    image_ids = split["image_id"]
    first_rows = [k for k in range(len(split)) if k == 0 or image_ids[k] != image_ids[k - 1]]
    split = split.select(first_rows)
    pixels = processor.image_processor(images=list(split["image"]), return_tensors="pt")["pixel_values"]
    labels = []
    for scene in map(json.loads, split["scene"]):
        present_colors = {o["color"] for o in scene["objects"]}
        present_shapes = {o["shape"] for o in scene["objects"]}
        labels.append([float(c in present_colors) for c in colors] + [float(s in present_shapes) for s in shapes])
    return pixels, torch.tensor(labels)


class SmallCnn(nn.Module):
    def __init__(self, width: int):
        super().__init__()
        self.features = nn.Sequential(
            nn.Conv2d(3, 32, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),
            nn.Conv2d(32, 64, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),
            nn.Conv2d(64, width, 3, padding=1), nn.ReLU(), nn.AdaptiveMaxPool2d(1),
        )

    def forward(self, pixels):
        return self.features(pixels).flatten(1)


class VitReadout(nn.Module):
    def __init__(self, vision_model, readout: str):
        super().__init__()
        self.vision_model, self.readout = vision_model, readout

    def forward(self, pixels):
        states = self.vision_model(pixel_values=pixels).last_hidden_state
        if self.readout == "cls":
            return states[:, 0]
        return states[:, 1:].mean(dim=1) if self.readout == "mean" else states[:, 1:].max(dim=1).values


def build_variant(name: str):
    from configuration_sisc import PLAIN_IMAGE_TOWER, SiscConfig
    from modeling_sisc import SiscModel

    # the towers of the committed tables: the plain ViT (the small model's before), the hybrid with a 32-64-128 stem,
    # and the small model's tower now (16-32-64)
    stem = {"hybrid16_max": [16, 32, 64]}.get(name, [32, 64, 128] if name.startswith("hybrid") else None)
    config = SiscConfig.small(vocab_size=709, **{**PLAIN_IMAGE_TOWER, "vision_conv_stem": stem})
    if name == "cnn":
        return SmallCnn(config.vision_config.hidden_size), config
    if name == "vit_patch4":
        config.vision_config.patch_size = 4
    vision_model = SiscModel(config).vision_model  # built exactly as the main job builds it
    readout = "max" if name.endswith("max") else "mean" if name == "vit_mean" else "cls"
    return VitReadout(vision_model, readout), config


def grounding_probe(encoder, config, processor, cache_dir: str, run_probes=None) -> list[dict]:
    """benchmarks/image_grounding.py's linear probes (`run_probes`) of a tower trained here: what they report for a
    tower that is known to see shapes (the probe's own reach)."""
    if run_probes is None:
        try:  # run as a script: benchmarks/ is on the path
            from image_grounding import run_probes
        except ImportError:  # imported as benchmarks.shape_learnability
            from benchmarks.image_grounding import run_probes
    from modeling_sisc import SiscModel

    model = SiscModel(config).eval()
    model.vision_model = encoder.vision_model.eval()
    return run_probes(model, processor, cache_dir)


def train_variant(name, data, num_colors, args) -> dict:
    from modeling_sisc import bag_of_words_cross_entropy

    torch.manual_seed(args.seed)
    encoder, config = build_variant(name)
    head = nn.Linear(config.vision_config.hidden_size, data["train"][1].shape[1])
    params = list(encoder.parameters()) + list(head.parameters())
    optimizer = torch.optim.AdamW(params, lr=args.learning_rate, weight_decay=0.01)
    warmup = max(1, args.steps // 10)
    schedule = torch.optim.lr_scheduler.LambdaLR(
        optimizer, lambda s: (s + 1) / warmup if s < warmup else 0.5 * (1 + math.cos(math.pi * (s - warmup) / (args.steps - warmup))))
    train_x, train_y = data["train"]
    test_x, test_y = data["test"]
    labels = args.targets == "labels"
    majority = ((train_y.mean(0) > 0.5).float() == test_y).float().mean(0) if labels else None
    order = torch.Generator().manual_seed(args.seed)
    curve, start = [], time.time()
    for step in range(1, args.steps + 1):
        rows = torch.randint(len(train_x), (args.batch_size,), generator=order)
        logits = head(encoder(train_x[rows]))
        if labels or args.word_loss == "bce":
            loss = F.binary_cross_entropy_with_logits(logits, train_y[rows])
        else:
            loss = bag_of_words_cross_entropy(logits, train_y[rows])
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        schedule.step()
        if not labels:  # no labels to score against: the probes at the end do
            if step % args.eval_every == 0 or step == args.steps:
                curve.append({"step": step, "train_loss": loss.item(), "seconds": time.time() - start})
                print(f"  {name:<10} step {step:>5}  loss {loss.item():.4f}  ({time.time() - start:.0f} s)", flush=True)
            continue
        if step % args.eval_every == 0 or step == args.steps:
            encoder.eval()
            with torch.no_grad():
                correct = ((head(encoder(test_x)) > 0).float() == test_y).float().mean(0)
            encoder.train()
            point = {"step": step, "train_loss": loss.item(), "seconds": time.time() - start,
                     "colour_accuracy": 100 * correct[:num_colors].mean().item(),
                     "shape_accuracy": 100 * correct[num_colors:].mean().item(),
                     "shape_accuracy_each": [round(100 * v, 1) for v in correct[num_colors:].tolist()]}
            curve.append(point)
            print(f"  {name:<10} step {step:>5}  colour {point['colour_accuracy']:5.1f}%  shape "
                  f"{point['shape_accuracy']:5.1f}%  ({time.time() - start:.0f} s)", flush=True)
    result = {"variant": name, "parameters": sum(p.numel() for p in encoder.parameters()), "curve": curve}
    if labels:
        result["majority_colour_accuracy"] = 100 * majority[:num_colors].mean().item()
        result["majority_shape_accuracy"] = 100 * majority[num_colors:].mean().item()
    if (getattr(args, "grounding_probe", False) or not labels) and name != "cnn":
        print(f"  {name}: image_grounding.py's probes of the trained tower", flush=True)
        result["grounding_probe"] = grounding_probe(encoder, config, data["processor"], args.data_cache_dir)
    return result


def main(argv=None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--variants", nargs="+", choices=VARIANTS, default=list(DEFAULT_VARIANTS))
    parser.add_argument("--steps", type=int, default=1200)
    parser.add_argument("--batch_size", type=int, default=64)
    parser.add_argument("--learning_rate", type=float, default=1e-3)
    parser.add_argument("--eval_every", type=int, default=300)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--data_cache_dir", default="data_cache/shapes")
    parser.add_argument("--out", default=os.path.join(ROOT, "benchmarks", "results", "shape_learnability.json"))
    parser.add_argument("--targets", choices=("labels", "caption_words"), default="labels",
                        help="what the tower learns from: the scenes' colour / shape labels, or its captions' words")
    parser.add_argument("--word_loss", choices=("softmax", "bce"), default="softmax",
                        help="with --targets caption_words: the main job's softmax over the vocabulary, or per-word "
                             "binary cross-entropy")
    parser.add_argument("--grounding_probe", action="store_true",
                        help="also run benchmarks/image_grounding.py's linear probes on each trained ViT tower")
    args = parser.parse_args(argv)
    if args.steps < 2 or args.eval_every < 1 or args.batch_size < 1:
        parser.error("--steps must be >= 2, --eval_every and --batch_size >= 1")
    if args.targets == "caption_words" and "cnn" in args.variants:
        parser.error("--targets caption_words scores ViT towers with image_grounding.py's probes: drop cnn")

    from sisc_train.tasks.encoders import EncoderArguments, build_processor
    from sisc_train.synthetic.shapes import COLORS, SHAPES, ShapesConfig, load_shapes_dataset

    shapes_config = ShapesConfig()
    colors, shapes = COLORS[: shapes_config.num_colors], SHAPES[: shapes_config.num_shapes]
    dataset = load_shapes_dataset(shapes_config, cache_dir=args.data_cache_dir)
    processor = build_processor(EncoderArguments())  # the main job's: 64 px images, normalised as in training
    data = {split: labelled_images(dataset[split], processor, colors, shapes) for split in ("train", "test")}
    if args.targets == "caption_words":
        data["train"] = caption_word_targets(dataset["train"], processor)
    data["processor"] = processor
    print(f"{len(data['train'][0])} training / {len(data['test'][0])} test images; {args.steps} steps of batch "
          f"{args.batch_size} per variant, {torch.get_num_threads()} threads", flush=True)
    results = [train_variant(name, data, len(colors), args) for name in args.variants]
    print("\nvariant      parameters  colour  shape  (majority: colour / shape)")
    for result in results if args.targets == "labels" else ():
        last = result["curve"][-1]
        print(f"{result['variant']:<12} {result['parameters']:>10,}  {last['colour_accuracy']:5.1f}%  "
              f"{last['shape_accuracy']:5.1f}%  ({result['majority_colour_accuracy']:.1f}% / "
              f"{result['majority_shape_accuracy']:.1f}%)  {last['seconds']:.0f} s")
    output = {"args": vars(args), "shapes": list(shapes), "colours": list(colors), "results": results}
    os.makedirs(os.path.dirname(args.out), exist_ok=True)
    with open(args.out, "w") as handle:
        json.dump(output, handle, indent=2)
    return output


if __name__ == "__main__":
    main()
