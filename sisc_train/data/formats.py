"""Readers of the data formats people have, each turned into the rows SISC's trainers read, through `datasets`.

Image-caption formats (rows `image`, `caption`, `image_id`; dispatched by `sisc_train.data.pairs.load_pairs`):
- "rows": a .json / .jsonl / .csv / .parquet file of (image, caption or list of captions) rows, which covers
  ALBEF's pretraining lists `[{"image", "caption"}]` and its COCO / Flickr30K retrieval files (train: one caption
  per row with a string `image_id` such as "coco_123"; val / test: `{"image", "caption": [5 captions]}`);
- "karpathy": Karpathy-split JSON (`{"images": [{"filepath", "filename", "split", "sentences"}]}`);
- "coco_captions": COCO captions (`captions_train2017.json`: `{"images": [{"id", "file_name"}], "annotations":
  [{"image_id", "caption"}]}`);
- "webdataset": tar shards as img2dataset writes them (`00000.tar` holding `<key>.jpg`/`.png` + `.txt` and/or
  `.json`), a shard, a folder of shards, or a glob / brace pattern (`shards/{00000..00099}.tar`);
- "saved" (save_to_disk), "imagefolder", and "hub": a Hub dataset id, or a local folder laid out as one (data files
  and a README.md whose YAML has a `configs:` section), loaded with `load_dataset(source, name=--dataset_config)`.

Task formats (a `DatasetDict` in the layout of `sisc_train/synthetic/shapes_tasks.py`; `sisc_train.data.tasks`):
- "vqa_v2": the official VQA v2 questions (`v2_OpenEnded_mscoco_<subtype>_questions.json`) + annotations
  (`v2_mscoco_<subtype>_annotations.json`) files, images `COCO_<subtype>_<12-digit id>.jpg`;
- "albef_vqa": ALBEF's VQA files `[{"question_id", "question", "answer": [annotator answers], "image", "dataset"}]`;
- "nlvr2": the official NLVR2 JSON-lines files (`{"identifier": "dev-850-0-0", "sentence", "label", ...}`), images
  `<identifier without its last -N>-img0.png` / `-img1.png`, in train's numbered `directory` sub-folders or not;
- "albef_nlvr": ALBEF's NLVR files `[{"images": [left, right], "sentence", "label": "True"/"False"}]`;
- "saved" and "hub" as above.

`detect_format` tells them apart from the file or folder contents; `--data_format` overrides it. Image ids that are
not integers (ALBEF's "coco_123", or an image path when the data has no ids) become integers with `stable_id`, the
same in every process and every run, so captions of one image are never each other's negatives.
"""

from __future__ import annotations

import functools
import glob
import hashlib
import json
import logging
import os
import re
from collections import Counter
from dataclasses import dataclass

import datasets

logger = logging.getLogger(__name__)

PAIR_FORMATS = ("rows", "karpathy", "coco_captions", "webdataset", "saved", "imagefolder", "hub")
TASK_FORMATS = {"vqa": ("vqa_v2", "albef_vqa", "saved", "hub"), "nlvr": ("nlvr2", "albef_nlvr", "saved", "hub")}
DATA_FORMATS = ("auto", *dict.fromkeys(PAIR_FORMATS + TASK_FORMATS["vqa"] + TASK_FORMATS["nlvr"]))
FILE_BUILDERS = {".json": "json", ".jsonl": "json", ".csv": "csv", ".parquet": "parquet"}
KARPATHY_SPLIT_ALIASES = {"validation": "val", "dev": "val"}
ACCEPTED = (
    "image-caption data: rows (json/jsonl/csv/parquet rows, ALBEF's pretraining and retrieval files), karpathy, "
    "coco_captions, webdataset, saved, imagefolder, hub; VQA: vqa_v2 (official questions + annotations), albef_vqa; "
    "NLVR: nlvr2 (official JSON lines), albef_nlvr"
)
FORMAT_HELP = f"Data format; 'auto' (default) detects it from the file / folder contents: {ACCEPTED}."
_HEAD_BYTES = 1 << 16


def stable_id(value) -> int:
    """An int64 image id: an int is kept; anything else (a string id, an image path) is hashed (63 bits, the same in
    every process and run, unlike Python's `hash`)."""
    if isinstance(value, int) and not isinstance(value, bool):
        return value
    digest = hashlib.blake2b(str(value).encode("utf-8"), digest_size=8).digest()
    return int.from_bytes(digest, "big") >> 1


# ---------------------------------------------------------------------------------------------------------------
# what a file or folder holds


@dataclass
class JsonShape:
    """What the head of a JSON file shows: `layout` "object" (one JSON object), "list" (a JSON list of rows),
    "lines" (JSON lines) or "other"; `keys`: the keys seen in the head (for an object: its top-level keys and those
    of its first entries); `row_keys`: the keys of the first row of a list / JSON-lines file."""

    layout: str
    keys: frozenset
    row_keys: frozenset


@functools.lru_cache(maxsize=64)
def _sniff(path: str, mtime: float) -> JsonShape:
    with open(path, encoding="utf-8", errors="replace") as handle:
        head = handle.read(_HEAD_BYTES)
    text = head.lstrip("\ufeff \t\r\n")
    keys = frozenset(re.findall(r'"([^"\\]{1,64})"\s*:', head))
    decoder = json.JSONDecoder()
    if text.startswith("["):
        try:
            first, _ = decoder.raw_decode(text[1:].lstrip())
        except ValueError:
            first = None
        return JsonShape("list", keys, frozenset(first) if isinstance(first, dict) else frozenset())
    if text.startswith("{"):
        try:
            first, end = decoder.raw_decode(text)
        except ValueError:  # an object longer than the head: one big JSON object
            return JsonShape("object", keys, frozenset())
        if text[end:].strip():  # another value after the first: JSON lines
            return JsonShape("lines", keys, frozenset(first))
        return JsonShape("object", keys, frozenset(first))
    return JsonShape("other", keys, frozenset())


def sniff_json(path: str) -> JsonShape:
    return _sniff(os.path.abspath(path), os.path.getmtime(path))


def classify_json(path: str) -> str | None:
    """The format of a .json / .jsonl file from its head: one of the format names, or None when it matches none
    (then `describe_json` says what was found)."""
    shape = sniff_json(path)
    if shape.layout in ("list", "lines"):
        row = shape.row_keys
        if {"images", "sentence"} <= row:
            return "albef_nlvr"
        if {"identifier", "sentence"} <= row:
            return "nlvr2"
        if "question" in row and ("answer" in row or "question_id" in row):
            return "albef_vqa"
        return "rows" if row else None
    if shape.layout == "object":
        keys = shape.keys
        if "questions" in keys and "question_id" in keys:
            return "vqa_v2"
        if "annotations" in keys and "question_id" in keys and "multiple_choice_answer" in keys:
            return "vqa_v2"
        if "images" in keys and ("filename" in keys or "sentences" in keys):
            return "karpathy"
        if ("images" in keys and "file_name" in keys) or ("annotations" in keys and "caption" in keys):
            return "coco_captions"
        if shape.row_keys and not any(k in shape.row_keys for k in ("images", "annotations", "questions")):
            return "rows"  # one complete object: a JSON-lines file of one row
    return None


def describe_json(path: str) -> str:
    shape = sniff_json(path)
    shown = sorted(shape.row_keys or shape.keys)[:12]
    return {"list": f"a JSON list whose first row has the keys {shown}", "lines": f"JSON lines whose first row has the keys {shown}",
            "object": f"a JSON object with the keys {shown}"}.get(shape.layout, "no JSON object or list at its start")


def _is_saved_dataset(path: str) -> bool:
    return os.path.isdir(path) and any(os.path.exists(os.path.join(path, n)) for n in ("dataset_dict.json", "state.json"))


def _has_config_card(path: str) -> bool:
    """A folder laid out as a Hub dataset: a README.md whose YAML header has a `configs:` section."""
    card = os.path.join(path, "README.md")
    if not os.path.isfile(card):
        return False
    with open(card, encoding="utf-8", errors="replace") as handle:
        text = handle.read(_HEAD_BYTES)
    header = text.split("---", 2)[1] if text.startswith("---") and text.count("---") >= 2 else ""
    return re.search(r"^configs\s*:", header, re.MULTILINE) is not None


def is_shard_pattern(source: str) -> bool:
    return source.lower().endswith((".tar", ".tar.gz", ".tgz")) or (
        not os.path.exists(source) and any(c in source for c in "*?{[") and ".tar" in source.lower()
    )


def _task_files(folder: str) -> dict[str, str]:
    """{path: format} of the .json / .jsonl files directly in `folder` that are VQA / NLVR files."""
    found = {}
    for path in sorted(glob.glob(os.path.join(glob.escape(folder), "*.json")) + glob.glob(os.path.join(glob.escape(folder), "*.jsonl"))):
        kind = classify_json(path)
        if kind in ("vqa_v2", "albef_vqa", "nlvr2", "albef_nlvr"):
            found[path] = kind
    return found


def detect_format(source: str, data_format: str | None = None, dataset_config: str | None = None,
                  accepted: tuple[str, ...] = PAIR_FORMATS) -> str:
    """The format of `source` (`data_format` when it is given and not "auto"); a ValueError says which formats are
    `accepted` and what was found."""
    if data_format and data_format != "auto":
        if data_format not in accepted:
            raise ValueError(f"--data_format {data_format!r} is not one this script reads; it reads {list(accepted)}")
        return data_format
    kind = _detect(source, dataset_config, accepted)
    if kind not in accepted:
        raise ValueError(f"{source!r} looks like {kind!r} data, which this script does not read; it reads {list(accepted)} "
                         "(pass --data_format if the detection is wrong)")
    return kind


def _detect(source: str, dataset_config: str | None, accepted: tuple[str, ...]) -> str:
    if is_shard_pattern(source) or (os.path.isdir(source) and glob.glob(os.path.join(glob.escape(source), "*.tar"))
                                    and not _is_saved_dataset(source)):
        return "webdataset"
    if os.path.isfile(source):
        extension = os.path.splitext(source)[1].lower()
        if extension in (".csv", ".parquet"):
            return "rows"
        if extension in (".json", ".jsonl"):
            kind = classify_json(source)
            if kind is None:
                raise ValueError(f"{source}: not a data file SISC recognises: found {describe_json(source)}; the formats "
                                 f"accepted are {ACCEPTED} (--data_format names one)")
            return kind
        raise ValueError(f"unsupported data file {source!r}: use one of {sorted(FILE_BUILDERS)} or .tar shards; the formats "
                         f"accepted are {ACCEPTED}")
    if os.path.isdir(source):
        if _is_saved_dataset(source):
            return "saved"
        if dataset_config or _has_config_card(source):
            return "hub"
        kinds = set(_task_files(source).values())
        if len(kinds) > 1:  # ALBEF's data/ folder holds its VQA and NLVR files side by side: take this task's
            kinds = (kinds & set(accepted)) or kinds
        if len(kinds) > 1:
            raise ValueError(f"{source}: holds files of several formats {sorted(kinds)}; pass --data_format")
        return kinds.pop() if kinds else "imagefolder"
    if re.fullmatch(r"[\w.-]+(/[\w.-]+)?", source) and not source.endswith((".json", ".jsonl", ".csv", ".parquet")):
        return "hub"  # a Hub dataset id
    raise FileNotFoundError(f"no dataset at {source!r} (a file, a folder, .tar shards or a Hub dataset id)")


def default_root(path: str, image_root: str | None) -> str:
    """The folder relative image paths are under: `image_root`, else the data file's folder (or the folder)."""
    if image_root:
        return image_root
    return path if os.path.isdir(path) else os.path.dirname(os.path.abspath(path))


def _join(root: str, image) -> str:
    return image if os.path.isabs(image) else os.path.join(root, image)


def _load_json(path: str, field: str | None = None) -> datasets.Dataset:
    """A JSON file (or its list under `field`) through `datasets`' json builder (cached as Arrow)."""
    try:
        return datasets.load_dataset("json", data_files=path, field=field, split="train")
    except Exception as error:  # the builder's own messages do not name the file or the field
        where = f"the list under {field!r} of " if field else ""
        raise ValueError(f"{path}: cannot read {where}this JSON file ({type(error).__name__}: {error})") from error


def require_columns(ds, path: str, needed: tuple[str, ...], what: str) -> None:
    missing = [name for name in needed if name not in (ds.column_names or [])]
    if missing:
        raise ValueError(f"{path}: {what} lack the field(s) {missing}; they have {ds.column_names}")


def check_image_exists(path: str, data_file: str, row: int, field: str) -> None:
    """Fail before training when the first image is not where the data says (a wrong or missing --image_root)."""
    if isinstance(path, str) and not os.path.exists(path):
        raise FileNotFoundError(f"{data_file}: the image of row {row} ({field!r}) is not at {path}; pass --image_root "
                                "FOLDER, the folder the image paths are relative to")


# ---------------------------------------------------------------------------------------------------------------
# image-caption formats


def read_karpathy_split(path: str, split: str, image_root: str | None = None) -> tuple[list[str], list[list[str]]]:
    """(image paths, captions of each image) of one split of a Karpathy-split JSON; images without captions are
    left out (they cannot be a retrieval item or a training pair)."""
    with open(path) as handle:
        entries = json.load(handle)["images"]
    wanted = KARPATHY_SPLIT_ALIASES.get(split, split)
    root = image_root if image_root is not None else os.path.dirname(os.path.abspath(path))
    images, captions = [], []
    for entry in entries:
        if ("train" if entry.get("split") == "restval" else entry.get("split")) != wanted:
            continue
        sentences = [(s["raw"] if isinstance(s, dict) else str(s)).strip() for s in entry.get("sentences", [])]
        sentences = [s for s in sentences if s]
        if sentences:
            images.append(os.path.join(root, entry.get("filepath", ""), entry["filename"]))
            captions.append(sentences)
    if not images:
        found = sorted({str(e.get("split")) for e in entries})
        raise ValueError(f"{path}: no image with captions in split {wanted!r}; the file has the splits {found}")
    return images, captions


def karpathy_splits(path: str) -> list[str]:
    with open(path) as handle:
        entries = json.load(handle)["images"]
    return sorted({"train" if e.get("split") == "restval" else str(e.get("split")) for e in entries})


def coco_image_root(path: str, image_root: str | None) -> str:
    """--image_root, else COCO's layout: `annotations/captions_train2017.json` next to `train2017/` (when that
    folder exists), else the file's folder."""
    if image_root:
        return image_root
    here = os.path.dirname(os.path.abspath(path))
    match = re.match(r"captions_(\w+?)\.json$", os.path.basename(path))
    if match:
        for candidate in (os.path.join(os.path.dirname(here), match.group(1)), os.path.join(here, match.group(1))):
            if os.path.isdir(candidate):
                logger.info("%s: images read from %s (pass --image_root to choose another folder)", path, candidate)
                return candidate
    return here


def read_coco_captions(path: str, image_root: str | None = None) -> datasets.Dataset:
    """COCO captions as rows `image` (path), `caption`, `image_id` (COCO's), one per caption."""
    annotations = _load_json(path, "annotations")
    require_columns(annotations, path, ("image_id", "caption"), "the entries of 'annotations'")
    images = _load_json(path, "images")
    require_columns(images, path, ("id", "file_name"), "the entries of 'images'")
    root = coco_image_root(path, image_root)
    file_of = dict(zip(images["id"], images["file_name"]))

    def to_rows(batch, indices):
        missing = [(i, image_id) for i, image_id in zip(indices, batch["image_id"]) if image_id not in file_of]
        if missing:
            row, image_id = missing[0]
            raise ValueError(f"{path}: annotation {row} has the image_id {image_id}, which is not in the file's 'images'")
        return {"image": [_join(root, file_of[i]) for i in batch["image_id"]], "caption": batch["caption"],
                "image_id": batch["image_id"]}

    rows = annotations.map(to_rows, batched=True, with_indices=True, remove_columns=annotations.column_names,
                           features=datasets.Features({"image": datasets.Value("string"), "caption": datasets.Value("string"),
                                                       "image_id": datasets.Value("int64")}))
    if len(rows):
        check_image_exists(rows[0]["image"], path, 0, "image_id")
    return rows


def _expand_braces(pattern: str) -> list[str]:
    """webdataset's brace notation: `{00000..00009}` (zero-padded ranges) and `{a,b}`, possibly several."""
    match = re.search(r"\{([^{}]*)\}", pattern)
    if not match:
        return [pattern]
    body, head, tail = match.group(1), pattern[: match.start()], pattern[match.end():]
    numeric = re.fullmatch(r"(\d+)\.\.(\d+)", body)
    if numeric:
        first, last = numeric.groups()
        width = len(first) if first.startswith("0") else 0
        choices = [str(n).zfill(width) for n in range(int(first), int(last) + 1)]
    else:
        choices = body.split(",")
    return [expanded for choice in choices for expanded in _expand_braces(head + choice + tail)]


def shard_files(source: str) -> list[str]:
    """The tar shards of `source`: one shard, a folder of shards, or a glob / brace pattern; sorted."""
    if os.path.isdir(source):
        files = sorted(glob.glob(os.path.join(glob.escape(source), "*.tar")))
    else:
        files = []
        for pattern in _expand_braces(source):
            files += sorted(glob.glob(pattern)) if any(c in pattern for c in "*?[") else [pattern]
    missing = [f for f in files if not os.path.isfile(f)]
    if missing or not files:
        raise FileNotFoundError(f"webdataset {source!r}: " + (f"no shard {missing[0]}" if missing else "matches no .tar file"))
    return files


WEBDATASET_IMAGE_COLUMNS = ("jpg", "jpeg", "png", "webp")


def read_webdataset(source: str, streaming: bool = False, caption_column: str | None = None):
    """img2dataset-style shards as rows `image` (undecoded bytes), `caption` (the `.txt`, else the `.json`'s
    "caption", or `caption_column`: a file extension or a key of the `.json`), `image_id` (the shard and key)."""
    files = shard_files(source)
    try:
        ds = datasets.load_dataset("webdataset", data_files={"train": files}, split="train", streaming=streaming)
    except ValueError as error:
        if "WebDataset format" not in str(error):
            raise
        raise ValueError(f"{files[0]}: the first samples of this shard do not all hold the same files (e.g. a .jpg in "
                         "one and a .png in another); datasets' webdataset loader needs one image type per dataset") from error
    columns = list(ds.features or {})
    image_columns = [c for c in WEBDATASET_IMAGE_COLUMNS if c in columns]
    if not image_columns:
        raise ValueError(f"{files[0]}: its samples hold no image file ({', '.join(WEBDATASET_IMAGE_COLUMNS)}); they hold {columns}")
    json_key = "caption"
    if caption_column and caption_column not in columns:
        json_key = caption_column
    text_column = caption_column if caption_column in columns else ("txt" if "txt" in columns else None)
    if text_column is None and "json" not in columns:
        raise ValueError(f"{files[0]}: its samples hold no caption (.txt, or a .json with {json_key!r}); they hold {columns}")
    ds = ds.cast_column(image_columns[0], datasets.Image(decode=False))  # decoded by the collator, which skips bad ones

    def to_rows(batch):
        captions = []
        for i in range(len(batch["__key__"])):
            text = batch[text_column][i] if text_column else None
            if text is None and "json" in batch:
                text = (batch["json"][i] or {}).get(json_key)
            captions.append(text.strip() if isinstance(text, str) else "")  # empty: skipped and counted
        return {"image": batch[image_columns[0]], "caption": captions,
                "image_id": [stable_id(f"{os.path.basename(u)}/{k}") for u, k in zip(batch["__url__"], batch["__key__"])]}

    features = datasets.Features({"image": datasets.Image(decode=False), "caption": datasets.Value("string"),
                                  "image_id": datasets.Value("int64")})
    return ds.map(to_rows, batched=True, remove_columns=columns, features=features)


def load_hub(source: str, split: str | None, dataset_config: str | None, streaming: bool = False):
    """`load_dataset(source, name=dataset_config, split=split)`: a Hub id or a local folder laid out as one (split
    None: all its splits, a DatasetDict)."""
    try:
        return datasets.load_dataset(source, name=dataset_config, split=split, streaming=streaming)
    except Exception as error:
        raise _hub_error(source, dataset_config, error) from error


def hub_splits(source: str, dataset_config: str | None) -> list[str]:
    try:
        return list(datasets.get_dataset_split_names(source, config_name=dataset_config))
    except Exception as error:
        raise _hub_error(source, dataset_config, error) from error


def _hub_error(source: str, dataset_config: str | None, error: Exception) -> Exception:
    """The error of a failed Hub load, saying what was tried: a wrong configuration, or no such dataset."""
    if "BuilderConfig" in str(error) or "config" in str(error).lower():
        return ValueError(f"{source}: --dataset_config {dataset_config!r}: {error}")
    if os.path.isdir(source):
        return ValueError(f"{source}: cannot load this folder as a dataset ({type(error).__name__}: {error})")
    return FileNotFoundError(f"{source!r}: no file or folder of that name here, and it could not be loaded as a Hub "
                             f"dataset ({type(error).__name__}: {error})")


# ---------------------------------------------------------------------------------------------------------------
# VQA


VQA_SUBTYPE_SPLITS = {"train2014": "train", "val2014": "validation", "test2015": "test", "test-dev2015": "test-dev"}
_ANSWER = {"answer": datasets.Value("string"), "answer_confidence": datasets.Value("string"), "answer_id": datasets.Value("int64")}


def vqa_features(with_types: bool) -> datasets.Features:
    features = {"question_id": datasets.Value("int64"), "question": datasets.Value("string")}
    if with_types:
        features.update(question_type=datasets.Value("string"), answer_type=datasets.Value("string"))
    features.update(multiple_choice_answer=datasets.Value("string"), answers=datasets.List(_ANSWER),
                    image_id=datasets.Value("int64"), image=datasets.Value("string"))
    return datasets.Features(features)


def vqa_v2_subtype(path: str) -> str:
    """A VQA v2 file's data subtype ("train2014", ...): from the official file name, else its `data_subtype`."""
    name = os.path.basename(path)
    match = re.match(r"(?:v2_)?(?:OpenEnded_)?mscoco_([\w-]+?)_(?:questions|annotations)\.json$", name)
    if match:
        return match.group(1)
    with open(path, encoding="utf-8", errors="replace") as handle:
        found = re.search(r'"data_subtype"\s*:\s*"([^"]+)"', handle.read(_HEAD_BYTES))
    if found:
        return found.group(1)
    raise ValueError(f"{path}: cannot tell its VQA v2 subtype (train2014, val2014, ...): neither the official file name "
                     "(v2_OpenEnded_mscoco_<subtype>_questions.json / v2_mscoco_<subtype>_annotations.json) nor a "
                     "'data_subtype' near its start")


def vqa_v2_files(source: str) -> dict[str, dict[str, str]]:
    """{split name: {"questions": path[, "annotations": path]}} of a folder of official VQA v2 files, or of one
    questions (or annotations) file and its partner in the same folder."""
    paths = [source] if os.path.isfile(source) else sorted(_task_files(source))
    folder = os.path.dirname(os.path.abspath(source)) if os.path.isfile(source) else source
    by_subtype: dict[str, dict[str, str]] = {}
    for path in sorted(set(paths + sorted(_task_files(folder)))):
        if classify_json(path) != "vqa_v2":
            continue
        kind = "questions" if "questions" in sniff_json(path).keys else "annotations"
        by_subtype.setdefault(vqa_v2_subtype(path), {})[kind] = path
    if os.path.isfile(source):  # only the given file's subtype
        by_subtype = {s: files for s, files in by_subtype.items() if source in files.values()}
    for subtype, files in by_subtype.items():
        if "questions" not in files:
            raise ValueError(f"{files['annotations']}: VQA v2 annotations without their questions file "
                             f"(v2_OpenEnded_mscoco_{subtype}_questions.json) in the same folder")
    if not by_subtype:
        raise ValueError(f"{source}: no VQA v2 questions file (v2_OpenEnded_mscoco_<subtype>_questions.json)")
    return {VQA_SUBTYPE_SPLITS.get(s, s): files for s, files in by_subtype.items()}


def read_vqa_v2(files: dict[str, str], image_root: str | None = None) -> datasets.Dataset:
    """One VQA v2 split: the questions joined with their annotations by question_id (a split without annotations,
    test / test-dev, gets empty `answers`), images `<root>[/<subtype>]/COCO_<subtype>_<12-digit id>.jpg`."""
    questions_file = files["questions"]
    subtype = vqa_v2_subtype(questions_file)
    questions = _load_json(questions_file, "questions")
    require_columns(questions, questions_file, ("question_id", "image_id", "question"), "the entries of 'questions'")
    root = default_root(questions_file, image_root)
    if os.path.isdir(os.path.join(root, subtype)):  # --image_root coco/ holding train2014/, val2014/, ...
        root = os.path.join(root, subtype)
    annotated = "annotations" in files
    if annotated:
        annotations_file = files["annotations"]
        annotations = _load_json(annotations_file, "annotations")
        require_columns(annotations, annotations_file, ("question_id", "answers"), "the entries of 'annotations'")
        asked, answered = list(questions["question_id"]), list(annotations["question_id"])
        if asked != answered:  # the official files list both in one order; reorder the annotations when they do not
            if sorted(asked) != sorted(answered):
                unmatched = sorted(set(asked) ^ set(answered))
                raise ValueError(f"{questions_file} and {annotations_file}: {len(unmatched)} question ids are in only one "
                                 f"of them (e.g. {unmatched[:3]})")
            position = {question_id: row for row, question_id in enumerate(answered)}
            annotations = annotations.select([position[q] for q in asked]).flatten_indices()
        kept = [c for c in ("answers", "multiple_choice_answer", "question_type", "answer_type") if c in annotations.column_names]
        questions = datasets.concatenate_datasets([questions, annotations.select_columns(kept)], axis=1)
    with_types = annotated and {"question_type", "answer_type"} <= set(questions.column_names)

    def to_rows(batch, indices):
        out = {"question_id": batch["question_id"], "question": batch["question"], "image_id": batch["image_id"],
               "image": [os.path.join(root, f"COCO_{subtype}_{int(i):012d}.jpg") for i in batch["image_id"]]}
        if annotated:
            for row, answers in zip(indices, batch["answers"]):
                if not answers or any(not isinstance(a, dict) or "answer" not in a for a in answers):
                    raise ValueError(f"{files['annotations']}: annotation {row} has no 'answers' list of {{'answer': ...}}")
            out["answers"] = [[{**_blank_answer(k), **a} for k, a in enumerate(answers)] for answers in batch["answers"]]
            out["multiple_choice_answer"] = batch.get("multiple_choice_answer") or [_majority(a) for a in out["answers"]]
            if with_types:
                out["question_type"], out["answer_type"] = batch["question_type"], batch["answer_type"]
        else:
            out["answers"] = [[] for _ in indices]
            out["multiple_choice_answer"] = ["" for _ in indices]
        return out

    rows = questions.map(to_rows, batched=True, with_indices=True, remove_columns=questions.column_names,
                         features=vqa_features(with_types))
    if len(rows):
        check_image_exists(rows[0]["image"], questions_file, 0, "image_id")
    return rows


def _blank_answer(index: int) -> dict:
    return {"answer": "", "answer_confidence": "yes", "answer_id": index + 1}


def _majority(answers: list[dict]) -> str:
    return Counter(a["answer"] for a in answers).most_common(1)[0][0] if answers else ""


def image_roots(image_root: str | None, path: str) -> dict[str | None, str]:
    """{the rows' "dataset" value: folder} from --image_root: one folder, or ALBEF's per-source roots as
    `vqa=coco/images,vg=visual_genome` (the key None: the folder of rows without a listed source)."""
    if image_root and "=" in image_root:
        roots = dict(part.split("=", 1) for part in image_root.split(",") if part)
        roots.setdefault(None, default_root(path, None))
        return roots
    return {None: default_root(path, image_root)}


def read_albef_vqa(path: str, image_root: str | None = None) -> datasets.Dataset:
    """ALBEF's VQA file (`vqa_train.json`, `vg_qa.json`, `vqa_test.json`): `answer` (annotator answers, absent in
    test files) becomes VQA v2's `answers`; images relative to --image_root (or per "dataset": vqa=DIR,vg=DIR)."""
    ds = _load_json(path)
    require_columns(ds, path, ("question", "image"), "the rows")
    roots = image_roots(image_root, path)
    has_answers = "answer" in ds.column_names

    def to_rows(batch, indices):
        n = len(indices)
        sources = batch.get("dataset") or [None] * n
        images = [_join(roots.get(s, roots[None]), image) for s, image in zip(sources, batch["image"])]
        answers = []
        for row, given in zip(indices, batch["answer"] if has_answers else [[]] * n):
            given = [given] if isinstance(given, str) else given
            if given is None or not all(isinstance(a, str) for a in given):
                raise ValueError(f"{path}: row {row}: 'answer' must be a list of answer strings, not {given!r}")
            answers.append([{"answer": a, "answer_confidence": "yes", "answer_id": k + 1} for k, a in enumerate(given)])
        ids = batch.get("question_id") or [stable_id(f"{path}:{i}") for i in indices]
        return {"question_id": [stable_id(q) for q in ids], "question": batch["question"], "answers": answers,
                "multiple_choice_answer": [_majority(a) for a in answers], "image_id": [stable_id(i) for i in images],
                "image": images}

    rows = ds.map(to_rows, batched=True, with_indices=True, remove_columns=ds.column_names, features=vqa_features(False))
    if len(rows):
        check_image_exists(rows[0]["image"], path, 0, "image")
    return rows


def albef_split_name(path: str) -> str:
    """ALBEF's file names as split names: vqa_train.json -> "train", nlvr_dev.json -> "dev", vg_qa.json -> "vg_qa"."""
    stem = os.path.splitext(os.path.basename(path))[0]
    return re.sub(r"^(vqa|nlvr2?)_", "", stem)


# ---------------------------------------------------------------------------------------------------------------
# NLVR


def nlvr_features() -> datasets.Features:
    return datasets.Features({"identifier": datasets.Value("string"), "sentence": datasets.Value("string"),
                              "left_image": datasets.Value("string"), "right_image": datasets.Value("string"),
                              "label": datasets.ClassLabel(names=["False", "True"])})


def _label(value, path: str, row: int) -> int:
    if isinstance(value, bool) or (isinstance(value, int) and value in (0, 1)):
        return int(value)
    if isinstance(value, str) and value.strip().lower() in ("true", "false"):
        return int(value.strip().lower() == "true")
    raise ValueError(f"{path}: row {row}: 'label' must be \"True\" or \"False\", not {value!r}")


def nlvr2_split_name(path: str) -> str:
    """NLVR2's file names as split names: train.json -> "train", dev.json -> "dev", test1.json -> "test"."""
    stem = os.path.splitext(os.path.basename(path))[0]
    return "test" if stem == "test1" else stem


def read_nlvr2(path: str, image_root: str | None = None) -> datasets.Dataset:
    """An official NLVR2 JSON-lines file: images `<identifier without -N>-img0.png` / `-img1.png` under --image_root,
    in its `<split>/` sub-folder and train's numbered `directory` sub-folders when those exist."""
    ds = _load_json(path)
    require_columns(ds, path, ("identifier", "sentence", "label"), "the rows")
    root = default_root(path, image_root)
    isdir = functools.lru_cache(maxsize=None)(os.path.isdir)
    directories = list(ds["directory"]) if "directory" in ds.column_names else None

    def folder(identifier: str, directory) -> str:
        base = root
        prefix = identifier.split("-", 1)[0]
        if isdir(os.path.join(base, prefix)):  # --image_root images/ holding train/, dev/, test1/
            base = os.path.join(base, prefix)
        if directory is not None and isdir(os.path.join(base, str(directory))):
            base = os.path.join(base, str(directory))
        return base

    def to_rows(batch, indices):
        left, right = [], []
        for row, identifier in zip(indices, batch["identifier"]):
            if not isinstance(identifier, str) or identifier.count("-") < 3:
                raise ValueError(f"{path}: row {row}: 'identifier' {identifier!r} is not NLVR2's <split>-<set>-<pair>-<sentence>")
            stem = identifier.rsplit("-", 1)[0]
            base = folder(identifier, directories[row] if directories is not None else None)
            left.append(os.path.join(base, f"{stem}-img0.png"))
            right.append(os.path.join(base, f"{stem}-img1.png"))
        return {"identifier": batch["identifier"], "sentence": batch["sentence"], "left_image": left, "right_image": right,
                "label": [_label(v, path, row) for row, v in zip(indices, batch["label"])]}

    rows = ds.map(to_rows, batched=True, with_indices=True, remove_columns=ds.column_names, features=nlvr_features())
    if len(rows):
        check_image_exists(rows[0]["left_image"], path, 0, "identifier")
    return rows


def read_albef_nlvr(path: str, image_root: str | None = None) -> datasets.Dataset:
    """ALBEF's NLVR file (`nlvr_train.json`, ...): `images` [left, right] relative to --image_root."""
    ds = _load_json(path)
    require_columns(ds, path, ("images", "sentence", "label"), "the rows")
    root = default_root(path, image_root)

    def to_rows(batch, indices):
        left, right = [], []
        for row, images in zip(indices, batch["images"]):
            if not isinstance(images, list) or len(images) != 2 or not all(isinstance(i, str) for i in images):
                raise ValueError(f"{path}: row {row}: 'images' must be a list of two image paths, not {images!r}")
            left.append(_join(root, images[0]))
            right.append(_join(root, images[1]))
        return {"identifier": [f"{albef_split_name(path)}-{i}" for i in indices], "sentence": batch["sentence"],
                "left_image": left, "right_image": right,
                "label": [_label(v, path, row) for row, v in zip(indices, batch["label"])]}

    rows = ds.map(to_rows, batched=True, with_indices=True, remove_columns=ds.column_names, features=nlvr_features())
    if len(rows):
        check_image_exists(rows[0]["left_image"], path, 0, "images")
    return rows


def resolve_image_paths(data, root: str, columns=("image", "left_image", "right_image")):
    """`data` (a DatasetDict) with the relative image paths of its string image `columns` joined to `root` (a Hub-style
    local folder's, or --image_root); image features (bytes) are left as they are."""
    for name, split in data.items():
        present = [c for c in columns if isinstance((split.features or {}).get(c), datasets.Value)
                   and split.features[c].dtype in ("string", "large_string")]
        if present:
            data[name] = split.map(lambda batch: {c: [_join(root, p) if p else p for p in batch[c]] for c in present},
                                   batched=True)
    return data


TASK_READERS = {"albef_vqa": read_albef_vqa, "nlvr2": read_nlvr2, "albef_nlvr": read_albef_nlvr}


def task_file_splits(source: str, kind: str) -> dict:
    """{split name: what to read} of a task source of format `kind` (one file, or a folder of such files)."""
    if kind == "vqa_v2":
        return vqa_v2_files(source)
    paths = [source] if os.path.isfile(source) else [p for p, k in _task_files(source).items() if k == kind]
    if not paths:
        raise ValueError(f"{source}: no {kind} file in this folder")
    name = nlvr2_split_name if kind == "nlvr2" else albef_split_name
    splits: dict[str, str] = {}
    for path in paths:
        splits.setdefault(name(path), path)
    return splits


def read_task_split(kind: str, what, image_root: str | None = None) -> datasets.Dataset:
    """One split of a task source (`task_file_splits`' value) as rows in the shapes task data's layout."""
    if kind == "vqa_v2":
        return read_vqa_v2(what, image_root)
    return TASK_READERS[kind](what, image_root)
