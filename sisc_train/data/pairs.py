"""Image-caption data for SISC training: loading through `datasets`, decoding in DataLoader workers, bad-sample skips.

Accepted sources (`load_pairs` dispatches by format; the readers are in `sisc_train/data/formats.py`):
- `"shapes"`: the embedded synthetic dataset (`sisc_train/synthetic/shapes.py`), built once and cached;
- "saved": a folder written by `Dataset.save_to_disk` / `DatasetDict.save_to_disk`;
- "imagefolder": a folder of images for `datasets`' `imagefolder` loader (captions in `metadata.jsonl` / `.csv`);
- "rows": a `.json` / `.jsonl` / `.csv` / `.parquet` file of (image path, caption) rows; relative image paths are
  resolved against the file's folder (or `image_root`). ALBEF's annotation files are such rows: its pretraining
  lists `[{"image", "caption"}]` and its COCO / Flickr30K retrieval files (train: one caption per row with a string
  `image_id`; val / test: `{"image", "caption": [5 captions]}`);
- "karpathy": Karpathy-split JSON (`{"images": [{"filepath", "filename", "split", "sentences": [{"raw": ...}]}]}`,
  the COCO / Flickr30K retrieval splits; `restval` counts as train, `validation` / `dev` mean `val`);
- "coco_captions": COCO captions (`captions_train2017.json`), images under `--image_root` (default: COCO's
  `train2017/` next to `annotations/`, when it is there);
- "webdataset": img2dataset's tar shards (`.jpg`/`.png` + `.txt` and/or `.json`): one shard, a folder of shards or
  a glob / brace pattern (`shards/{00000..00099}.tar`); stream them with --streaming;
- "hub": a Hub dataset id, or a local folder laid out as one (README.md with a `configs:` section), with
  --dataset_config and the data's own split names.
The format is detected from the file / folder contents (`--data_format` overrides it); a file that matches none is
an error that says what was found and which formats are accepted.
A caption column may hold one caption or a list of captions; lists are expanded to one row per (image, caption)
pair, and every row carries an `image_id` (an int: string ids and, without ids, image paths are mapped by
`formats.stable_id`) so that captions of one image are never each other's negatives.
Without --image_column / --caption_column the columns are found by their usual names (`IMAGE_COLUMNS`,
`CAPTION_COLUMNS`). Splits are the data's own: a single data file (or saved `Dataset`, COCO captions file, set of
shards) is the one split "train"; asking for another is an error that names the splits there are, never a silent
read of the training rows.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
from collections import Counter
from dataclasses import dataclass, field

import datasets
import torch

from sisc_train.data.formats import (
    FILE_BUILDERS,
    KARPATHY_SPLIT_ALIASES,
    PAIR_FORMATS,
    detect_format,
    hub_splits,
    karpathy_splits,
    load_hub,
    read_coco_captions,
    read_karpathy_split,
    read_webdataset,
    stable_id,
)
from sisc_train.data.images import decode_image

logger = logging.getLogger(__name__)

# Column names looked for, in this order, when --image_column / --caption_column are not given.
CAPTION_COLUMNS = ("caption", "captions", "text", "sentence", "sentences", "txt", "description", "title")
IMAGE_COLUMNS = ("image", "img", "jpg", "png", "image_path", "file_name", "filepath", "path")


def _has_dataset_dict(path: str) -> bool:
    return os.path.exists(os.path.join(path, "dataset_dict.json"))


def pair_format(source: str, data_format: str | None = None, dataset_config: str | None = None) -> str:
    """The format of an image-caption source (`sisc_train.data.formats.PAIR_FORMATS`), detected unless given."""
    return detect_format(source, data_format, dataset_config, PAIR_FORMATS)


def has_own_splits(source: str, data_format: str | None = None, dataset_config: str | None = None) -> bool:
    """False for a source without splits of its own (a single data file, COCO captions file, webdataset shards or
    saved single `Dataset`), which is read whole as the split "train" (the name `datasets` gives it); True for Karpathy
    JSON, a saved `DatasetDict`, an imagefolder and a Hub dataset."""
    kind = pair_format(source, data_format, dataset_config)
    if kind == "saved":
        return _has_dataset_dict(source)
    return kind in ("karpathy", "imagefolder", "hub")


def data_splits(source: str, data_format: str | None = None, dataset_config: str | None = None) -> list[str]:
    """The split names of `source` (not "shapes"): a source without splits of its own has the one split "train";
    Karpathy JSON the splits of its entries ("restval" counts as "train"); a saved `DatasetDict`, an imagefolder or
    a Hub dataset (of `dataset_config`) its own."""
    kind = pair_format(source, data_format, dataset_config)
    if not has_own_splits(source, kind):
        return ["train"]
    if kind == "karpathy":
        return karpathy_splits(source)
    if kind == "saved":
        with open(os.path.join(source, "dataset_dict.json")) as handle:
            return list(json.load(handle)["splits"])
    if kind == "hub":
        return hub_splits(source, dataset_config)
    # the splits `datasets` infers from the folder layout, without reading the images
    return [str(name) for name in datasets.load_dataset_builder("imagefolder", data_dir=source).config.data_files]


def missing_split(source: str, split: str, data_format: str | None = None, dataset_config: str | None = None) -> str | None:
    """None when `source` has the split `split`, otherwise a sentence that names the splits it has."""
    kind = pair_format(source, data_format, dataset_config)
    splits = data_splits(source, kind, dataset_config)
    wanted = KARPATHY_SPLIT_ALIASES.get(split, split) if kind == "karpathy" else split
    if wanted in splits:
        return None
    if not has_own_splits(source, kind):
        return (f"{source!r} has no split {split!r}: it is a single data file (or saved Dataset, or set of shards) without "
                "splits of its own, read whole as the one split 'train'")
    return f"{source!r} has no split {split!r}; its splits are {splits}"

def _find_column(source: str, columns: list[str], given: str | None, candidates: tuple[str, ...], what: str,
                 features=None) -> str:
    """`given` when it is a column; else the first of `candidates` present (any case; for images, else the one
    column of `datasets.Image` type); else a ValueError naming the columns and the flag to pass."""
    if given is not None:
        if given not in columns:
            raise ValueError(f"dataset {source!r} has no column {given!r}; its columns are {columns}")
        return given
    by_lower = {}
    for name in columns:
        by_lower.setdefault(name.lower(), name)
    found = next((by_lower[c] for c in candidates if c in by_lower), None)
    if found is None and what == "image":
        typed = [name for name, feature in (features or {}).items() if isinstance(feature, datasets.Image)]
        found = typed[0] if len(typed) == 1 else None
    if found is None:
        raise ValueError(
            f"dataset {source!r}: no {what} column found among its columns {columns} (looked for {list(candidates)}); "
            f"name it with --{what}_column"
        )
    if found != candidates[0]:
        logger.info("%s: %ss read from the column %r (pass --%s_column to choose another)", source, what, found, what)
    return found


def load_pairs(
    source: str,
    split: str = "train",
    *,
    image_column: str | None = None,
    caption_column: str | None = None,
    streaming: bool = False,
    image_root: str | None = None,
    data_format: str | None = None,
    dataset_config: str | None = None,
) -> datasets.Dataset | datasets.IterableDataset:
    """Load an image-caption dataset (see module docstring) as rows with `image`, `caption` and `image_id`.

    `split` must be a split the data has (a ValueError names the ones it has): a single data file or saved `Dataset`
    has only "train". `image_column` / `caption_column`: None finds them among `IMAGE_COLUMNS` / `CAPTION_COLUMNS`.
    `image_root`: the folder relative image paths are under (default: the data file's folder). `data_format`: one of
    `PAIR_FORMATS` (None / "auto": detected); `dataset_config`: the configuration of a Hub(-style) dataset."""
    kind = pair_format(source, data_format, dataset_config)
    if kind in ("rows", "coco_captions", "webdataset") and split != "train":
        # one split: reading it as another would evaluate on training rows
        raise ValueError(missing_split(source, split, kind))
    base_dir = image_root
    if kind == "karpathy":
        images, captions = read_karpathy_split(source, split, image_root)  # names the file's splits when it lacks one
        ds = datasets.Dataset.from_dict({"image": images, "caption": captions})
        return expand_captions(ds.to_iterable_dataset() if streaming else ds)
    if kind == "coco_captions":
        rows = read_coco_captions(source, image_root)  # one row per caption, COCO's image ids
        return rows.to_iterable_dataset() if streaming else rows
    if kind == "webdataset":
        return read_webdataset(source, streaming, caption_column)
    if kind == "saved":
        loaded = datasets.load_from_disk(source)
        if isinstance(loaded, datasets.DatasetDict):
            if split not in loaded:
                raise ValueError(f"{source!r} has no split {split!r}; its splits are {list(loaded)}")
            ds = loaded[split]
        else:
            if split != "train":
                raise ValueError(missing_split(source, split, kind))
            ds = loaded
        if streaming:
            ds = ds.to_iterable_dataset()
    elif kind == "imagefolder":
        problem = missing_split(source, split, kind)
        if problem:
            raise ValueError(problem)
        ds = datasets.load_dataset("imagefolder", data_dir=source, split=split, streaming=streaming)
    elif kind == "hub":
        problem = missing_split(source, split, kind, dataset_config)
        if problem:
            raise ValueError(problem)
        ds = load_hub(source, split, dataset_config, streaming)
        if os.path.isdir(source):  # a local stand-in: string paths relative to its folder
            base_dir = image_root or os.path.abspath(source)
    else:  # "rows": json / jsonl / csv / parquet rows, ALBEF's annotation files among them
        extension = os.path.splitext(source)[1].lower()
        if extension not in FILE_BUILDERS:
            raise ValueError(f"unsupported data file {source!r}: use one of {sorted(FILE_BUILDERS)}")
        ds = datasets.load_dataset(FILE_BUILDERS[extension], data_files=source, split="train", streaming=streaming)
        base_dir = image_root or os.path.dirname(os.path.abspath(source))

    columns = ds.column_names if ds.column_names is not None else list(ds.features or {})
    image_column = _find_column(source, columns, image_column, IMAGE_COLUMNS, "image", ds.features)
    caption_column = _find_column(source, columns, caption_column, CAPTION_COLUMNS, "caption")
    for chosen, name in ((image_column, "image"), (caption_column, "caption")):
        if chosen != name:  # the chosen column takes the name; a column already called so is not the one meant
            if name in columns:
                ds = ds.remove_columns([name])
            ds = ds.rename_column(chosen, name)
    # Decode images in the collator (DataLoader workers), where a corrupt file can be skipped and counted.
    if isinstance((ds.features or {}).get("image"), datasets.Image):
        ds = ds.cast_column("image", datasets.Image(decode=False))
    return expand_captions(ds, base_dir=base_dir, has_ids="image_id" in columns)


def expand_captions(ds, *, base_dir: str | None = None, has_ids: bool = False):
    """One row per (image, caption); relative paths resolved. `image_id`: the data's own (a string id such as ALBEF's
    "coco_123" made an int by `stable_id`), else the image path's `stable_id` (rows of one image file, as in ALBEF's
    one-caption-per-row files, share it), else (decoded images) the source row's number."""

    def expand(batch, indices):
        copied = [key for key in batch if key != "image_id"]
        out = {key: [] for key in copied}
        out["image_id"] = []
        for row, index in enumerate(indices):
            captions = batch["caption"][row]
            captions = captions if isinstance(captions, (list, tuple)) else [captions]
            if not captions:
                captions = [""]  # one row, which the collator skips and counts ("empty caption"), not none at all
            image = batch["image"][row]
            if base_dir is not None and isinstance(image, str) and not os.path.isabs(image):
                image = os.path.join(base_dir, image)
            for caption in captions:
                for key in copied:
                    out[key].append(batch[key][row])
                out["image"][-1] = image
                out["caption"][-1] = caption
                if has_ids:
                    out["image_id"].append(stable_id(batch["image_id"][row]))
                else:
                    out["image_id"].append(stable_id(image) if isinstance(image, str) else index)
        return out

    features = None
    if getattr(ds, "features", None) is not None:
        features = ds.features.copy()
        if isinstance(features["caption"], (datasets.Sequence, datasets.List if hasattr(datasets, "List") else ())):
            features["caption"] = datasets.Value("string")
        features["image_id"] = datasets.Value("int64")
    return ds.map(expand, batched=True, with_indices=True, features=features)


class BadEvaluationData(RuntimeError):
    """More of the evaluation data was unreadable or empty than `max_bad_fraction` allows (or all of it)."""


class SkipReasons(Counter):
    """{reason: count} of skipped rows, keyed by kind ("empty caption", "bad image (FileNotFoundError)") so that
    counts add up over batches, and `examples`: {reason: the first few messages, naming the file}."""

    max_examples = 3

    def __init__(self, counts=None, examples=None):
        super().__init__(counts or {})
        self.examples = {reason: list(messages) for reason, messages in (examples or {}).items()}

    def add(self, reason: str, example: str | None = None, count: int = 1) -> None:
        self[reason] += count
        kept = self.examples.setdefault(reason, [])
        if example is not None and example not in kept and len(kept) < self.max_examples:
            kept.append(example)

    def merge(self, other: dict | None) -> None:
        """Add another batch's counts (a SkipReasons or a plain dict) and keep its examples while there is room."""
        for reason, count in (other or {}).items():
            self[reason] += count
        for reason, messages in getattr(other, "examples", {}).items():
            for message in messages:
                self.add(reason, message, count=0)

    def describe(self) -> str:
        parts = []
        for reason, count in self.items():
            examples = self.examples.get(reason)
            parts.append(f"{reason}: {count}" + (f" (e.g. {'; '.join(examples)})" if examples else ""))
        return ", ".join(parts) or "none"


@dataclass
class SkipCounter:
    """Counts samples skipped for bad data, by reason (with a few examples each), and fails once too large a
    fraction was bad."""

    max_bad_fraction: float = 0.05
    seen: int = 0
    skipped: int = 0
    reasons: SkipReasons = field(default_factory=SkipReasons)

    def update(self, seen: int, skipped: int, reasons: dict | None = None) -> None:
        self.seen += int(seen)
        self.skipped += int(skipped)
        self.reasons.merge(reasons)

    def check(self, min_seen: int = 1) -> None:
        if self.seen >= min_seen and self.skipped > self.max_bad_fraction * self.seen:
            raise RuntimeError(
                f"{self.skipped} of {self.seen} samples ({self.skipped / self.seen:.1%}) were unreadable or empty, "
                f"more than the allowed {self.max_bad_fraction:.1%} (--max_bad_fraction); reasons: {self.reasons.describe()}"
                + _missing_file_hint(self.reasons)
            )

    def report(self) -> str:
        return f"skipped {self.skipped} of {self.seen} samples" + (f" ({self.reasons.describe()})" if self.skipped else "")


def _missing_file_hint(reasons: dict) -> str:
    if not reasons.get("bad image (FileNotFoundError)"):
        return ""
    return ("; relative image paths are resolved against the data file's folder: pass --image_root FOLDER when they "
            "are relative to another folder")


def _image_name(value) -> str:
    """The file an image value comes from, for error messages."""
    if isinstance(value, (str, os.PathLike)):
        return str(value)
    if isinstance(value, dict):
        return str(value.get("path") or f"<{len(value.get('bytes') or b'')} bytes>")
    if isinstance(value, (bytes, bytearray)):
        return f"<{len(value)} bytes>"
    return f"<{type(value).__name__}>"


def _failure_message(value, error: Exception) -> str:
    if isinstance(error, FileNotFoundError):
        return f"{_image_name(value)} (no such file)"
    return f"{_image_name(value)}: {error}"


def caption_id(caption: str) -> int:
    """A stable 63-bit id of a caption's text, case and spacing ignored: equal texts get equal ids in every process
    (the multi-positive objective's "captions known to match")."""
    digest = hashlib.blake2b(" ".join(caption.lower().split()).encode("utf-8"), digest_size=8).digest()
    return int.from_bytes(digest, "big") >> 1


class PairCollator:
    """Decodes and processes a list of rows into a model batch, skipping unreadable images and empty captions.

    Skipped rows are replaced by copies of readable rows of the same batch (with the same image id, so a copy is
    never a negative of its original): every process keeps the same batch size, which the global-batch contrastive
    loss needs. `num_seen` / `num_skipped` / `skip_reasons` ({reason: count}) / `skip_examples` ({reason: the first few
    messages, naming the file}) report what happened.
    `caption_ids` identify equal caption texts (`caption_id`).
    Extra numeric columns listed in `passthrough` (e.g. cached teacher embeddings) are stacked into tensors.
    `relevance_fn(rows) -> bool array (captions x images)`, when the data knows its ground truth, adds the batch's
    `relevance` matrix for the false-negative diagnostics.
    Rows with a `negative_caption` (a caption false of the row's image, for the negative-caption loss) add
    `negative_input_ids` / `negative_attention_mask`; an empty one gets an all-zero mask row (no negative).
    """

    def __init__(self, processor, passthrough: tuple[str, ...] = (), relevance_fn=None):
        self.processor = processor
        self.passthrough = passthrough
        self.relevance_fn = relevance_fn

    def negative_captions(self, rows: list[dict]) -> dict:
        texts = [(row.get("negative_caption") or "").strip() for row in rows]
        tokens = self.processor.tokenizer(texts, return_tensors="pt", padding=True, truncation=True)
        mask = tokens["attention_mask"] * torch.tensor([[bool(text)] for text in texts], dtype=tokens["attention_mask"].dtype)
        return {"negative_input_ids": tokens["input_ids"], "negative_attention_mask": mask}

    def __call__(self, rows: list[dict]) -> dict:
        kept, images, reasons = [], [], SkipReasons()
        for row in rows:
            caption = row.get("caption")
            if not isinstance(caption, str) or not caption.strip():
                reasons.add("empty caption", f"{caption!r} of image {_image_name(row.get('image'))}")
                continue
            try:
                images.append(decode_image(row["image"]))
            except Exception as error:  # any unreadable image is skipped, whatever the decoder raised
                reasons.add(f"bad image ({type(error).__name__})", _failure_message(row["image"], error))
                continue
            kept.append(row)
        if not kept:
            raise RuntimeError(
                f"every sample of a batch of {len(rows)} was unreadable or empty: {reasons.describe()}"
                + _missing_file_hint(reasons)
            )
        order = [i % len(kept) for i in range(len(rows))]  # refill skipped slots with kept rows
        batch = self.processor(
            images=[images[i] for i in order],
            text=[kept[i]["caption"].strip() for i in order],
            return_tensors="pt",
            padding=True,
            truncation=True,
        )
        batch = dict(batch)
        batch.pop("token_type_ids", None)
        batch["image_ids"] = torch.tensor([int(kept[i]["image_id"]) for i in order], dtype=torch.long)
        batch["caption_ids"] = torch.tensor([caption_id(kept[i]["caption"]) for i in order], dtype=torch.long)
        for name in self.passthrough:
            batch[name] = torch.tensor([kept[i][name] for i in order], dtype=torch.float32)
        if "negative_caption" in kept[0]:
            batch.update(self.negative_captions([kept[i] for i in order]))
        if self.relevance_fn is not None:
            batch["relevance"] = torch.as_tensor(self.relevance_fn([kept[i] for i in order]), dtype=torch.bool)
        batch["num_seen"] = torch.tensor(len(rows))
        batch["num_skipped"] = torch.tensor(len(rows) - len(kept))
        # plain dicts: Accelerate rebuilds mappings in a batch by their type, which would lose a SkipReasons' examples
        batch["skip_reasons"], batch["skip_examples"] = dict(reasons), reasons.examples
        return batch


def pop_bookkeeping(batch: dict) -> tuple[int, int, dict, torch.Tensor | None]:
    """Remove the collator's counters (and ground-truth relevance) from a batch before it goes to the model."""
    reasons = SkipReasons(batch.pop("skip_reasons"), batch.pop("skip_examples", None))
    return int(batch.pop("num_seen")), int(batch.pop("num_skipped")), reasons, batch.pop("relevance", None)


# ---------------------------------------------------------------------------------------------------------------
# Can the tokenizer read the captions? Captions in another script become all [UNK] and would train silently.

UNK_WARN_SHARE = 0.05  # warn above this share of [UNK] among the caption tokens
FRAGMENT_WARN_SHARE = 0.30  # warn above this share of single-letter word pieces
UNK_MAX_SHARE = 0.50  # refuse to train above this share of [UNK]


def vocabulary_report(input_ids, attention_mask, tokenizer, captions: list[str] | None = None) -> dict:
    """How well a (WordPiece) tokenizer reads tokenized captions.

    Counted over the real tokens (inside the attention mask, special tokens other than [UNK] left out):
    `unk_share`, the share of [UNK]; `fragment_share`, the share of single-character pieces of words split into
    several pieces ("g ##r ##i ##n ..."), a vocabulary spelling words out; `example_tokens` (and `example_caption`
    when `captions` are given), the caption with the most [UNK], else the most fragments.
    """
    ids = torch.as_tensor(input_ids)
    mask = torch.as_tensor(attention_mask).bool()
    unique = ids.unique().tolist()
    pieces = dict(zip(unique, tokenizer.convert_ids_to_tokens(unique)))
    special = set(tokenizer.all_special_ids) - {tokenizer.unk_token_id}

    def per_token(test) -> torch.Tensor:  # test(id, piece) of every token, through a lookup table of the ids seen
        table = torch.zeros(max(unique, default=0) + 1, dtype=torch.bool)
        table[unique] = torch.tensor([bool(test(i, pieces[i])) for i in unique], dtype=torch.bool)
        return table[ids]

    real = mask & ~per_token(lambda i, piece: i in special)
    unk = real & (ids == tokenizer.unk_token_id)
    continuation = per_token(lambda i, piece: piece.startswith("##"))
    single = per_token(lambda i, piece: len(piece.removeprefix("##")) == 1)
    next_continues = torch.cat([continuation[:, 1:], torch.zeros_like(continuation[:, :1])], dim=1)
    fragment = real & ~unk & single & (continuation | next_continues)
    total = int(real.sum())
    per_row = unk.sum(dim=1) if unk.any() else fragment.sum(dim=1)
    row = int(per_row.argmax()) if len(per_row) else 0
    return {
        "captions": int(ids.shape[0]),
        "tokens": total,
        "unk_share": int(unk.sum()) / max(total, 1),
        "fragment_share": int(fragment.sum()) / max(total, 1),
        "example_caption": captions[row] if captions and len(captions) > row else None,
        "example_tokens": [pieces[i] for i in ids[row][mask[row]].tolist()] if ids.numel() else [],
    }


# what to do about it (the flags of sisc_train/tasks/encoders.py)
TOKENIZER_HINT = ("use a tokenizer that covers these captions: pass --tokenizer_name_or_path (e.g. bert-base-uncased), "
                  "or --text_model_name_or_path to start from a pretrained BERT-family text model with its tokenizer")


def check_vocabulary(
    report: dict,
    *,
    warn_unk: float = UNK_WARN_SHARE,
    warn_fragments: float = FRAGMENT_WARN_SHARE,
    max_unk: float = UNK_MAX_SHARE,
) -> None:
    """Log a warning when `vocabulary_report`'s shares exceed `warn_unk` / `warn_fragments`; raise a ValueError
    above `max_unk` [UNK] (the model would learn nothing from these captions)."""
    numbers = (
        f"{report['unk_share']:.1%} of {report['tokens']} caption tokens ({report['captions']} captions) are [UNK] and "
        f"{report['fragment_share']:.1%} are single-letter word pieces"
    )
    caption = f"{report['example_caption']!r} -> " if report.get("example_caption") is not None else ""
    example = f"e.g. {caption}{' '.join(report['example_tokens'])}"
    if report["unk_share"] > max_unk:
        raise ValueError(
            f"the tokenizer cannot read these captions: {numbers} (more than {max_unk:.0%} [UNK] is refused); {example}. "
            f"To fix it, {TOKENIZER_HINT}."
        )
    if report["unk_share"] > warn_unk or report["fragment_share"] > warn_fragments:
        logger.warning(
            "the tokenizer reads these captions poorly: %s (warning above %.0f%% / %.0f%%); %s. Training goes on; %s.",
            numbers, 100 * warn_unk, 100 * warn_fragments, example, TOKENIZER_HINT,
        )


def check_caption_vocabulary(rows, tokenizer, max_captions: int = 256, **thresholds) -> dict:
    """`vocabulary_report` of the first `max_captions` non-empty captions of `rows` (a Dataset or IterableDataset
    with a `caption` column), tokenized as the collator tokenizes them, then `check_vocabulary`. Costs no training
    step: call it before training. Returns the report."""
    head = rows.select_columns(["caption"]).take(max_captions)
    captions = [c.strip() for c in (row["caption"] for row in head) if isinstance(c, str) and c.strip()]
    if not captions:
        return {}
    tokens = tokenizer(captions, padding=True, truncation=True, return_tensors="pt")
    report = vocabulary_report(tokens["input_ids"], tokens["attention_mask"], tokenizer, captions)
    check_vocabulary(report, **thresholds)
    return report
