"""Turn the Tabler icons (MIT, https://tabler.io/icons) into a SISC image-caption dataset, split by concept.

    npm install --prefix data_cache/tabler @tabler/icons@3.48.0 @tabler/icons-png@3.48.0
    python tools/prepare_tabler.py --npm_dir data_cache/tabler --output data_cache/tabler_dataset
    accelerate launch train/pretrain.py --dataset data_cache/tabler_dataset ...

(`--install` runs that npm command when the packages are missing.) Both packages must be 3.48.0: newer
`@tabler/icons` no longer matches the PNG package's icon names.

Input: `@tabler/icons/icons.json` (each icon's name, category and about 10 tags) and the 240 x 240 RGBA drawings
`@tabler/icons-png/icons/{outline,filled}/<name>.png`. Output (`DatasetDict.save_to_disk`): one row per image with
`image` (PNG, alpha composited on white, resized to `--image_size`), `caption` (a list: the name with dashes as
spaces, the category, each tag; duplicates dropped), `image_id` (unique over all splits), `name` (the icon's name),
`style` ("outline" / "filled") and `category`. The trainer expands the caption lists to one row per pair and keeps
`image_id`, so the captions of one image are never each other's negatives.

Splits: train / validation / test by CONCEPT, the icon's name: an icon's outline and filled drawings are always in
the same split, and no name is in two splits; names are shuffled with `--seed`, so the split is deterministic.
Captions are shared between images on purpose ("arrow" fits hundreds of icons): evaluation reads a caption as
relevant to every image that has the same caption (`sisc_train.evaluation.retrieval`), which R@K-any and mAP@R use.

Images are stored inside the dataset (no image files, so no file name such as `test-pipe` can be taken for a split
marker by a folder loader).
"""

from __future__ import annotations

import argparse
import io
import json
import os
import random
import shutil
import subprocess

import datasets
from PIL import Image

VERSION = "3.48.0"
PACKAGES = (f"@tabler/icons@{VERSION}", f"@tabler/icons-png@{VERSION}")
STYLES = ("outline", "filled")
SPLITS = ("train", "validation", "test")


def npm_command(npm_dir: str) -> list[str]:
    return ["npm", "install", "--prefix", npm_dir, *PACKAGES]


def package_paths(npm_dir: str) -> tuple[str, str]:
    """(icons.json, the PNG icons folder) under the npm prefix `npm_dir`."""
    modules = os.path.join(npm_dir, "node_modules", "@tabler")
    return os.path.join(modules, "icons", "icons.json"), os.path.join(modules, "icons-png", "icons")


def check_versions(npm_dir: str) -> None:
    """Stop on other versions than 3.48.0: the two packages' names drift apart in later releases."""
    for package in ("icons", "icons-png"):
        path = os.path.join(npm_dir, "node_modules", "@tabler", package, "package.json")
        if os.path.exists(path):
            with open(path) as handle:
                version = json.load(handle).get("version")
            if version != VERSION:
                raise SystemExit(f"{path}: @tabler/{package} is {version}, this script needs {VERSION}; reinstall with:\n  "
                                 + " ".join(npm_command(npm_dir)))


def captions_of(entry: dict) -> list[str]:
    """The name (dashes as spaces), the category, each tag; stripped, empty ones and repeats (any case) dropped."""
    candidates = [str(entry["name"]).replace("-", " "), entry.get("category"), *(entry.get("tags") or [])]
    captions, seen = [], set()
    for value in candidates:
        if value is None:  # icons.json has a few null tags
            continue
        text = " ".join(str(value).split())
        if text and text.lower() not in seen:
            seen.add(text.lower())
            captions.append(text)
    return captions


def split_concepts(names: list[str], seed: int, fractions: tuple[float, float]) -> dict[str, str]:
    """{name: split}: the names shuffled with `seed`, the first `fractions[1]` to test, the next `fractions[0]` to
    validation, the rest to train. Sorted first, so the split does not depend on the order of icons.json."""
    order = sorted(names)
    random.Random(seed).shuffle(order)
    n_validation, n_test = (round(f * len(order)) for f in fractions)
    if n_test < 1 or n_validation < 1 or n_test + n_validation >= len(order):
        raise ValueError(f"{len(order)} concepts cannot be split into {n_validation} validation / {n_test} test concepts "
                         "and a non-empty train split; change --validation_fraction / --test_fraction")
    return {name: ("test" if k < n_test else "validation" if k < n_test + n_validation else "train")
            for k, name in enumerate(order)}


def load_icon(path: str, size: int) -> bytes:
    """PNG bytes of the drawing, alpha composited on white (transparent pixels are black in RGB), size x size."""
    with Image.open(path) as image:
        image = image.convert("RGBA")
        white = Image.new("RGBA", image.size, (255, 255, 255, 255))
        image = Image.alpha_composite(white, image).convert("RGB")
        if image.size != (size, size):
            image = image.resize((size, size), Image.Resampling.LANCZOS)  # thin strokes: a good low-pass filter
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    return buffer.getvalue()


def read_icons(icons_json: str, png_dir: str) -> list[dict]:
    """One record per (icon, style) drawing that has a PNG: name, style, category, captions, path. Sorted by name and
    style. An icon without any PNG is left out with a note; a malformed icons.json is an error naming the entry."""
    with open(icons_json) as handle:
        icons = json.load(handle)
    if not isinstance(icons, dict) or not icons:
        raise ValueError(f"{icons_json}: expected an object mapping icon names to entries")
    records, missing = [], []
    for key in sorted(icons):
        entry = icons[key]
        if not isinstance(entry, dict) or not entry.get("name"):
            raise ValueError(f"{icons_json}: entry {key!r} has no 'name' (got {entry!r:.120})")
        styles = entry.get("styles") or {"outline": {}}
        found = False
        for style in STYLES:
            path = os.path.join(png_dir, style, f"{entry['name']}.png")
            if style in styles and os.path.exists(path):
                found = True
                records.append({"name": entry["name"], "style": style, "category": str(entry.get("category") or ""),
                                "caption": captions_of(entry), "path": path})
        if not found:
            missing.append(entry["name"])
    if missing:
        print(f"note: {len(missing)} icons of {icons_json} have no PNG under {png_dir} (first: {missing[:3]}); left out")
    if not records:
        raise ValueError(f"no icon of {icons_json} has a PNG under {png_dir}/{{{','.join(STYLES)}}}/<name>.png")
    return records


def build_dataset(icons_json: str, png_dir: str, *, image_size: int = 64, seed: int = 0,
                  validation_fraction: float = 0.1, test_fraction: float = 0.1,
                  max_icons: int | None = None) -> datasets.DatasetDict:
    """The DatasetDict described in the module docstring. `max_icons`: keep only the first concepts of the seeded
    order (quick experiments), still split by concept."""
    records = read_icons(icons_json, png_dir)
    names = sorted({r["name"] for r in records})
    if max_icons is not None:
        order = list(names)
        random.Random(seed).shuffle(order)
        keep = set(order[:max_icons])
        records = [r for r in records if r["name"] in keep]
        names = sorted(keep)
    split_of = split_concepts(names, seed, (validation_fraction, test_fraction))
    features = datasets.Features({
        "image": datasets.Image(), "caption": datasets.Sequence(datasets.Value("string")),
        "image_id": datasets.Value("int64"), "name": datasets.Value("string"), "style": datasets.Value("string"),
        "category": datasets.Value("string"),
    })
    columns = {split: {key: [] for key in features} for split in SPLITS}
    for image_id, record in enumerate(records):  # ids over all splits: one id never names two images
        out = columns[split_of[record["name"]]]
        out["image"].append({"bytes": load_icon(record["path"], image_size), "path": None})
        out["caption"].append(record["caption"])
        out["image_id"].append(image_id)
        for key in ("name", "style", "category"):
            out[key].append(record[key])
    return datasets.DatasetDict({split: datasets.Dataset.from_dict(columns[split], features=features) for split in SPLITS})


def describe(dataset: datasets.DatasetDict) -> str:
    lines = []
    for split, rows in dataset.items():
        n_captions = sum(len(c) for c in rows["caption"])
        lines.append(f"  {split}: {len(set(rows['name']))} concepts, {len(rows)} images, {n_captions} (image, caption) pairs")
    return "\n".join(lines)


def main(argv=None) -> datasets.DatasetDict:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--npm_dir", default="data_cache/tabler", help="npm prefix the two Tabler packages are installed under")
    parser.add_argument("--output", default="data_cache/tabler_dataset", help="folder to save the DatasetDict to")
    parser.add_argument("--image_size", type=int, default=64, help="side of the square images, in pixels")
    parser.add_argument("--seed", type=int, default=0, help="seed of the concept split")
    parser.add_argument("--validation_fraction", type=float, default=0.1)
    parser.add_argument("--test_fraction", type=float, default=0.1)
    parser.add_argument("--max_icons", type=int, default=None, help="keep only this many concepts (quick experiments)")
    parser.add_argument("--install", action="store_true", help="run the npm install when the packages are missing")
    parser.add_argument("--overwrite", action="store_true", help="replace an existing --output folder")
    args = parser.parse_args(argv)
    if args.image_size < 8:
        parser.error(f"--image_size {args.image_size} is too small (at least 8)")
    icons_json, png_dir = package_paths(args.npm_dir)
    if not (os.path.exists(icons_json) and os.path.isdir(png_dir)):
        command = npm_command(args.npm_dir)
        if not args.install:
            raise SystemExit(f"the Tabler packages are not under {args.npm_dir!r} (no {icons_json} or {png_dir}); "
                             f"install them with\n  {' '.join(command)}\nor pass --install to run that")
        print("running:", " ".join(command), flush=True)
        subprocess.run(command, check=True)
    check_versions(args.npm_dir)
    if os.path.exists(args.output):
        if not args.overwrite:
            raise SystemExit(f"{args.output} exists; pass --overwrite to replace it")
        shutil.rmtree(args.output)
    dataset = build_dataset(icons_json, png_dir, image_size=args.image_size, seed=args.seed,
                            validation_fraction=args.validation_fraction, test_fraction=args.test_fraction,
                            max_icons=args.max_icons)
    dataset.save_to_disk(args.output)
    print(f"saved {args.output}:\n{describe(dataset)}")
    return dataset


if __name__ == "__main__":
    main()
