"""Precompute a frozen teacher's image and text embeddings for a whole training split, once.

    python train/cache_teacher.py --teacher outputs/teacher [--dataset shapes ...] [--cache_dir DIR]
    accelerate launch train/pretrain.py --teacher_cache DIR ...

The teacher is frozen, so running it at every training step repeats the same work (and, for the paper's ViT-B
teacher, roughly doubles the step cost). The cache is a `datasets` dataset with one row per training row
(`teacher_image_embeds`, `teacher_text_embeds`), computed with `datasets.map` on un-augmented inputs. It is keyed
by a hash of the teacher's weights and config and by the training data's fingerprint: pretraining refuses a cache
built for another teacher or another version of the data.
"""

from __future__ import annotations

import hashlib
import json
import os

import datasets
import torch

from modeling_sisc import SiscModel
from sisc_train.data.images import decode_image

METADATA_FILE = "sisc_teacher_cache.json"
EMBEDDING_COLUMNS = ("teacher_image_embeds", "teacher_text_embeds")


def teacher_key(teacher: SiscModel) -> str:
    """Hash of the teacher's weights and config: two different teachers never share a key."""
    digest = hashlib.sha256(teacher.config.to_json_string(use_diff=False).encode())
    for name, tensor in sorted(teacher.state_dict().items()):
        digest.update(name.encode())
        digest.update(tensor.detach().float().cpu().numpy().tobytes())
    return digest.hexdigest()[:16]


def data_key(rows: datasets.Dataset) -> str:
    """The datasets fingerprint of the training rows (changes with their content and processing)."""
    return rows._fingerprint


@torch.inference_mode()
def build_teacher_cache(teacher: SiscModel, processor, rows: datasets.Dataset, output_dir: str, batch_size: int = 256):
    """Compute and save the cache for `rows` (columns `image`, `caption`); returns the cache dataset."""
    teacher.eval()

    def embed(batch):
        images = [decode_image(value) for value in batch["image"]]
        inputs = processor(images=images, text=[c.strip() for c in batch["caption"]], return_tensors="pt", padding=True, truncation=True)
        image_embeds = teacher.get_image_features(inputs["pixel_values"].to(teacher.device))
        text_embeds = teacher.get_text_features(inputs["input_ids"].to(teacher.device), inputs["attention_mask"].to(teacher.device))
        return {"teacher_image_embeds": image_embeds.float().cpu().numpy(), "teacher_text_embeds": text_embeds.float().cpu().numpy()}

    cache = rows.map(embed, batched=True, batch_size=batch_size, remove_columns=rows.column_names, desc="teacher embeddings")
    cache.save_to_disk(output_dir)
    metadata = {"teacher_key": teacher_key(teacher), "data_key": data_key(rows), "num_rows": len(rows)}
    with open(os.path.join(output_dir, METADATA_FILE), "w") as f:
        json.dump(metadata, f, indent=2)
    return cache


def load_teacher_cache(cache_dir: str, rows: datasets.Dataset, teacher: SiscModel | None = None) -> datasets.Dataset:
    """Load a cache and check it belongs to these training rows (and to `teacher`, when given)."""
    path = os.path.join(cache_dir, METADATA_FILE)
    if not os.path.exists(path):
        raise FileNotFoundError(f"{cache_dir} is not a teacher cache (no {METADATA_FILE}); build it with train/cache_teacher.py")
    with open(path) as f:
        metadata = json.load(f)
    if metadata["data_key"] != data_key(rows) or metadata["num_rows"] != len(rows):
        raise ValueError(
            f"teacher cache {cache_dir} was built for other training data (fingerprint {metadata['data_key']}, "
            f"{metadata['num_rows']} rows; these rows: {data_key(rows)}, {len(rows)} rows): rebuild it"
        )
    if teacher is not None and metadata["teacher_key"] != teacher_key(teacher):
        raise ValueError(f"teacher cache {cache_dir} was built with another teacher (key {metadata['teacher_key']}): rebuild it")
    return datasets.load_from_disk(cache_dir)


def attach_teacher_cache(rows: datasets.Dataset, cache: datasets.Dataset) -> datasets.Dataset:
    """Training rows with their cached teacher embeddings as extra columns (row i <-> cache row i)."""
    return datasets.concatenate_datasets([rows, cache.select_columns(list(EMBEDDING_COLUMNS))], axis=1)
