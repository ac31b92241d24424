"""Image-text retrieval evaluation of a SISC model: ITC ranking and ALBEF-style ITM re-ranking of the top k.

    accelerate launch train/evaluate_retrieval.py --model outputs/sisc-small                  # embedded dataset, test split
    accelerate launch train/evaluate_retrieval.py --model M --data coco_karpathy.json --image_root coco/ --split test
    accelerate launch --num_processes 4 train/evaluate_retrieval.py --model M --data pairs.jsonl --rerank_k 128

`--data` accepts what the pretraining script accepts (`sisc_train/data/pairs.py`: the embedded `shapes` dataset, a
saved dataset folder, an imagefolder, a json/jsonl/csv/parquet file of (image, caption or list of captions) rows such
as ALBEF's `coco_test.json` / `flickr30k_test.json`, Karpathy-split JSON (`{"images": [{"filepath", "filename",
"split", "sentences": [{"raw": ...}]}]}`, COCO / Flickr30K), a COCO captions file (`captions_val2017.json`),
webdataset shards, or a Hub dataset id with `--dataset_config`; `--data_format` overrides the detection). Rows of one
image (same `image_id`, or the same image path) form one retrieval item with several captions. `--split` defaults
to "test"; a data file has no splits and is evaluated whole, and a split the data lacks is an error naming the ones
it has. The image and caption columns are found by their usual names unless `--image_column` / `--caption_column`.

Every image and caption is encoded once, in batches, in inference mode; with several processes each encodes a
contiguous share (Accelerate's `split_between_processes`) and the shares are gathered in process order
(`gather_object`), so the numbers are those of one process. Bad items are skipped and
counted as in training: an image that cannot be decoded is left out together with its captions, and so is an empty
caption; the metrics are those of the readable items, `results["skipped"]` says what was left out, and more than
`--max_bad_fraction` of the (image, caption) pairs left out is an error. Re-ranking scores each
query's k best ITC candidates with the ITM head on the fusion encoder (k x queries pairs, batched, queries sharded
over the processes) and ranks them above all other candidates by their ITM match log-odds; the rest keep their ITC
order. Metrics: `sisc_train.evaluation.retrieval_metrics` (TR / IR R@1/5/10 and their mean; with relevance also R@K
over all relevant items and mAP@R). Results: a table on stdout and a JSON file.

Relevance: the embedded shapes dataset has its exact ground truth. Any other data gets it from shared captions: a
caption is relevant to every image that has a caption of the same text (stripped, lower-cased, white space runs as
one space), not only to its own image. Where captions repeat (tags, labels, short titles: "arrow" fits hundreds of
icons) this credits a retrieved image that the caption fits as well as its own; where they hardly ever repeat (COCO,
Flickr30K) it is the own image, and R@K-any is about the standard R@K. It is a lower bound of the true relevance
(different words for the same thing do not count). A set too large for a dense matrix (more than
`MAX_RELEVANCE_ENTRIES` caption x image pairs) gets none, with a warning.
"""

from __future__ import annotations

import json
import logging
import os
import time
from collections import Counter
from contextlib import nullcontext
from dataclasses import asdict, dataclass, field

import numpy as np
import torch
from accelerate import Accelerator
from accelerate.utils import gather_object
from tqdm.auto import tqdm
from transformers import AutoProcessor, HfArgumentParser

from modeling_sisc import SiscModel
from sisc_train.data.formats import FORMAT_HELP
from sisc_train.data.images import decode_image
from sisc_train.data.pairs import (
    CAPTION_COLUMNS,
    IMAGE_COLUMNS,
    BadEvaluationData,
    SkipCounter,
    has_own_splits,
    load_pairs,
)
from sisc_train.evaluation.retrieval_metrics import RERANK_SCORES, rerank_mode, retrieval_metrics
from sisc_train.loop.launch import check_launch
from sisc_train.synthetic.shapes import ShapesConfig, load_shapes_dataset, retrieval_view

logger = logging.getLogger(__name__)

# ---------------------------------------------------------------------------------------------------------------
# data


@dataclass
class RetrievalSet:
    """Images (PIL images, paths or datasets image dicts; decoded batch by batch), their captions, each caption's
    image index and, when the data knows it, the (n_captions, n_images) ground-truth relevance."""

    images: list
    captions: list[str]
    caption_to_image: list[int]
    relevance: np.ndarray | None = None
    description: str = ""

    def __post_init__(self):
        if len(self.captions) != len(self.caption_to_image):
            raise ValueError(f"{len(self.captions)} captions but {len(self.caption_to_image)} caption -> image indices")
        if not self.images or not self.captions:
            raise ValueError(f"empty retrieval set ({self.description}): {len(self.images)} images, {len(self.captions)} captions")

    def subset(self, images: list[int], captions: list[int], note: str) -> "RetrievalSet":
        """The given images (indices, in order) and captions (indices of captions of those images)."""
        new_index = {old: new for new, old in enumerate(images)}
        relevance = self.relevance[np.ix_(captions, images)] if self.relevance is not None else None
        return RetrievalSet(
            [self.images[i] for i in images],
            [self.captions[c] for c in captions],
            [new_index[self.caption_to_image[c]] for c in captions],
            relevance,
            f"{self.description}, {note}",
        )


def load_retrieval_set(
    source: str,
    split: str | None = None,
    *,
    image_root: str | None = None,
    image_column: str | None = None,
    caption_column: str | None = None,
    shapes_config=None,
    data_cache_dir: str = "data_cache/shapes",
    max_images: int | None = None,
    data_format: str | None = None,
    dataset_config: str | None = None,
) -> RetrievalSet:
    """The retrieval items of `split` of `source` (see the module docstring); `max_images` keeps the first ones.

    `split` None: "test", or the whole data for a source without splits (a single data file); a split the data does
    not have is a ValueError naming the ones it has. Rows with an empty caption are left out (with a warning).
    `image_column` / `caption_column` None: found by name (`sisc_train.data.pairs.load_pairs`).
    `shapes_config`: the embedded dataset's `ShapesConfig` (default: the default preset). `data_format` /
    `dataset_config`: as for `load_pairs` (None: detected / none)."""
    own_splits = source == "shapes" or has_own_splits(source, data_format, dataset_config)
    split = ("test" if own_splits else "train") if split is None else split
    if source == "shapes":
        splits = load_shapes_dataset(shapes_config or ShapesConfig(), cache_dir=data_cache_dir)
        if split not in splits:
            raise ValueError(f"the shapes dataset has no split {split!r}; it has {sorted(splits)}")
        result = shapes_retrieval_set(splits[split], f"embedded shapes dataset ({split})")
    else:
        rows = load_pairs(source, split, image_column=image_column, caption_column=caption_column, image_root=image_root,
                          data_format=data_format, dataset_config=dataset_config)
        captions = rows["caption"]
        empty = [i for i, c in enumerate(captions) if not isinstance(c, str) or not c.strip()]
        if empty:  # an image without a caption is no retrieval item (as in the Karpathy splits)
            logger.warning("%s (%s): left out %d rows without a caption (first: row %d)", source, split, len(empty), empty[0])
            rows = rows.select(sorted(set(range(len(captions))) - set(empty)))
        columns = rows.select_columns(["image_id", "caption"])[:]
        first_row: dict[int, int] = {}
        for row, image_id in enumerate(columns["image_id"]):
            first_row.setdefault(int(image_id), row)
        index_of = {image_id: k for k, image_id in enumerate(first_row)}
        result = RetrievalSet(
            rows.select(list(first_row.values()))[:]["image"],
            [str(c).strip() for c in columns["caption"]],
            [index_of[int(i)] for i in columns["image_id"]],
            None,
            f"{source} ({split})" if own_splits else source,  # a data file is evaluated whole
        )
    if max_images is not None and max_images < len(result.images):
        keep = [c for c, i in enumerate(result.caption_to_image) if i < max_images]
        result = result.subset(list(range(max_images)), keep, f"first {max_images} images")
    if result.relevance is None:  # after the cut: the matrix is of the kept items only
        size = len(result.captions) * len(result.images)
        if size <= MAX_RELEVANCE_ENTRIES:
            result.relevance = shared_caption_relevance(result.captions, result.caption_to_image, len(result.images))
        else:
            logger.warning("%s: %d captions x %d images is too large a relevance matrix (over %d entries): only the "
                           "standard R@K are computed, not R@K-any / mAP@R (--max_images keeps fewer)", result.description,
                           len(result.captions), len(result.images), MAX_RELEVANCE_ENTRIES)
    return result


# a dense bool matrix of this many entries takes 256 MiB
MAX_RELEVANCE_ENTRIES = 1 << 28


def normalise_caption(caption: str) -> str:
    """The form in which two captions count as the same: stripped, lower-cased, runs of white space as one space."""
    return " ".join(str(caption).split()).lower()


def shared_caption_relevance(captions: list[str], caption_to_image: list[int], n_images: int) -> np.ndarray:
    """(n_captions, n_images) bool: caption c is relevant to image i when i has a caption of the same text
    (`normalise_caption`); so to its own image always, and to every other image that carries the same caption."""
    groups: dict[str, int] = {}
    group = np.array([groups.setdefault(normalise_caption(c), len(groups)) for c in captions], dtype=np.int64)
    images_of_group = np.zeros((len(groups), n_images), dtype=bool)
    images_of_group[group, np.asarray(caption_to_image, dtype=np.int64)] = True
    return images_of_group[group]


_SHAPES_VIEWS: dict[str, tuple] = {}  # split fingerprint -> retrieval view: runs in one process (benchmarks) decode once


def shapes_retrieval_set(split_dataset, description: str) -> RetrievalSet:
    """A split of the embedded shapes dataset, with its exact caption-image relevance."""
    key = getattr(split_dataset, "_fingerprint", None)
    view = _SHAPES_VIEWS.get(key) if key else None
    if view is None:
        view = retrieval_view(split_dataset)
        if key:
            _SHAPES_VIEWS.clear()  # keep one: the views hold decoded images
            _SHAPES_VIEWS[key] = view
    images, captions, caption_to_image, relevance = view
    return RetrievalSet([decode_image(image) for image in images], list(captions), list(caption_to_image), relevance, description)


# ---------------------------------------------------------------------------------------------------------------
# encoding


def _split(items, accelerator):
    """Context manager giving this process's contiguous share of `items` (a list or a tensor; all of them without an
    Accelerator): Accelerate's `split_between_processes`, without padding. Shares are in process order and differ by
    at most one item (the first `len(items) % num_processes` processes get one more), so `_gather` of per-item
    results puts them back in the order of `items`. (A `range` would not be split: pass a list or a tensor.)"""
    return nullcontext(items) if accelerator is None else accelerator.split_between_processes(items)


def _gather(value, accelerator):
    """Every process's `value` (a list, or a CPU tensor split along its first dimension), concatenated in process
    order, on every process.

    Accelerate's `gather_object` (all_gather_object), which takes shares of different lengths. Not
    `gather_for_metrics`: its tensor path (`gather`) needs equal-size shares (padding, then trimming), and while a
    prepared dataloader is at its last batch (an evaluation run from inside a training loop) it cuts what it gathers
    down to that dataloader's remainder, which would silently drop items here."""
    if accelerator is None or accelerator.num_processes == 1:
        return value  # as is: no copy of large hidden states
    if isinstance(value, torch.Tensor):
        return torch.cat(gather_object([value]))  # one tensor per process
    return gather_object(value)  # the processes' lists, concatenated


@dataclass
class EncodedSet:
    """Embeddings (L2-normalised, float32, CPU) and, for re-ranking, the encoders' hidden states, of the readable
    items of a retrieval set: `data` is the set of those items (the input set itself when nothing was left out) and
    `skipped` says what was left out (see `leave_out_bad_items`)."""

    image_embeds: torch.Tensor
    text_embeds: torch.Tensor
    image_hidden: torch.Tensor | None = None  # (n_images, patches + 1, hidden), model dtype
    text_hidden: torch.Tensor | None = None  # (n_captions, length, hidden), model dtype
    text_mask: torch.Tensor | None = None  # (n_captions, length)
    data: RetrievalSet | None = None
    skipped: dict | None = None


@torch.inference_mode()
def encode_images(model, processor, images, batch_size=128, *, keep_hidden=False, desc="encode images", accelerator=None):
    """(embeddings, hidden states or None, {index: reason} of the images that could not be decoded) of a list of
    images, decoded and encoded batch by batch. An unreadable image is left out: the embeddings have one row per
    readable image, in order. With several processes each decodes its contiguous shard; the embeddings and the bad
    indices are gathered, so every process knows the same kept images."""
    device = model.device
    embeds, hidden, bad = [], [], {}
    show = accelerator is None or accelerator.is_local_main_process
    with _split(list(range(len(images))), accelerator) as indices:  # indices into `images`, for the bad ones
        show = show and len(indices) > batch_size
        for start in tqdm(range(0, len(indices), batch_size), desc=desc, disable=not show):
            batch = []
            for i in indices[start : start + batch_size]:
                try:
                    batch.append(decode_image(images[i]))
                except Exception as error:  # any unreadable image is skipped, as the training collator does
                    bad[i] = f"bad image ({type(error).__name__})"
            if not batch:
                continue
            pixels = processor(images=batch, return_tensors="pt")["pixel_values"].to(device, model.dtype)
            outputs, embedding = model.encode_image(pixels)
            embeds.append(embedding.float().cpu())
            if keep_hidden:
                hidden.append(outputs.last_hidden_state.cpu())
    embeds = torch.cat(embeds) if embeds else torch.empty(0, model.config.embed_dim)
    if keep_hidden and not hidden:  # a shard without readable images still has the hidden states' shape
        size = model.config.vision_config.image_size // model.config.vision_config.patch_size
        hidden = [torch.empty(0, size * size + 1, model.config.vision_config.hidden_size, dtype=model.dtype)]
    hidden = torch.cat(hidden) if hidden else None
    bad = dict(_gather(sorted(bad.items()), accelerator))
    return _gather(embeds, accelerator), (_gather(hidden, accelerator) if keep_hidden else None), bad


@torch.inference_mode()
def encode_texts(model, processor, texts, batch_size=256, *, keep_hidden=False, desc="encode texts", accelerator=None):
    """(embeddings, hidden states or None, attention mask) of a list of captions. All captions are tokenized to one
    common length, so that cached hidden states of any captions can be batched together for re-ranking."""
    device = model.device
    tokens = processor(text=list(texts), return_tensors="pt", padding=True, truncation=True)
    input_ids, attention_mask = tokens["input_ids"], tokens["attention_mask"]
    embeds, hidden = [], []
    show = accelerator is None or accelerator.is_local_main_process
    # both tensors have one row per caption, so they are split alike
    with _split(input_ids, accelerator) as ids, _split(attention_mask, accelerator) as mask:
        show = show and len(ids) > batch_size
        for start in tqdm(range(0, len(ids), batch_size), desc=desc, disable=not show):
            rows = slice(start, start + batch_size)
            outputs, embedding = model.encode_text(ids[rows].to(device), mask[rows].to(device))
            embeds.append(embedding.float().cpu())
            if keep_hidden:
                hidden.append(outputs.last_hidden_state.cpu())
    embeds = torch.cat(embeds) if embeds else torch.empty(0, model.config.embed_dim)
    if keep_hidden and not hidden:  # a share without captions (fewer captions than processes) still has the shape
        hidden = [torch.empty(0, input_ids.shape[1], model.config.text_config.hidden_size, dtype=model.dtype)]
    hidden = torch.cat(hidden) if hidden else None
    return _gather(embeds, accelerator), (_gather(hidden, accelerator) if keep_hidden else None), attention_mask


def _describe_image(value) -> str:
    if isinstance(value, str):
        return value
    if isinstance(value, dict) and value.get("path"):
        return str(value["path"])
    return f"<{type(value).__name__}>"


def leave_out_bad_items(data: RetrievalSet, bad_images: dict[int, str]) -> tuple[list[int], list[int], dict]:
    """(kept image indices, kept caption indices, what was left out) when the images `bad_images` ({index: reason})
    could not be read: they go with all their captions, and empty captions go too. Counts are of (image, caption)
    pairs, as in training; `reasons` counts pairs by reason and `examples` names up to 10 unreadable images."""
    reasons: Counter = Counter()
    captions = []
    for c, (caption, image) in enumerate(zip(data.captions, data.caption_to_image)):
        if image in bad_images:
            reasons[bad_images[image]] += 1
        elif not str(caption).strip():
            reasons["empty caption"] += 1
        else:
            captions.append(c)
    images = [i for i in range(len(data.images)) if i not in bad_images]
    skipped = {
        "pairs": len(data.captions) - len(captions),
        "of_pairs": len(data.captions),
        "images": len(bad_images),
        "of_images": len(data.images),
        "reasons": dict(reasons),
        "examples": [f"{i}: {_describe_image(data.images[i])}" for i in sorted(bad_images)[:10]],
    }
    return images, captions, skipped


def skip_report(skipped: dict | None) -> str:
    """One line about what an evaluation left out ("" when nothing)."""
    if not skipped or not skipped["pairs"] and not skipped["images"]:
        return ""
    line = (
        f"left out {skipped['pairs']} of {skipped['of_pairs']} (image, caption) pairs "
        f"({skipped['images']} of {skipped['of_images']} images unreadable): {skipped['reasons']}"
    )
    return line + (f"; unreadable: {', '.join(skipped['examples'])}" if skipped["examples"] else "")


def check_bad_fraction(skipped: dict, max_bad_fraction: float | None, description: str) -> None:
    """Raise BadEvaluationData when more pairs than `max_bad_fraction` were left out (None: no limit), or all."""
    counter = SkipCounter(max_bad_fraction=1.0 if max_bad_fraction is None else max_bad_fraction)
    counter.update(skipped["of_pairs"], skipped["pairs"], skipped["reasons"])
    try:
        counter.check()
    except RuntimeError as error:
        raise BadEvaluationData(f"evaluation data {description}: {error}; {skip_report(skipped)}") from None
    if skipped["images"] == skipped["of_images"] or skipped["pairs"] == skipped["of_pairs"]:
        raise BadEvaluationData(f"evaluation data {description}: nothing readable is left; {skip_report(skipped)}")


def encode_set(
    model, processor, data: RetrievalSet, *, keep_hidden=False, image_batch_size=128, text_batch_size=256,
    accelerator=None, max_bad_fraction: float | None = None,
) -> EncodedSet:
    """The readable items of `data`, encoded (see EncodedSet). Unreadable images are found while encoding them, so
    the captions to encode are known after the images; `max_bad_fraction` (None: no limit) fails before that."""
    image_embeds, image_hidden, bad_images = encode_images(
        model, processor, data.images, image_batch_size, keep_hidden=keep_hidden, accelerator=accelerator
    )
    images, captions, skipped = leave_out_bad_items(data, bad_images)
    check_bad_fraction(skipped, max_bad_fraction, data.description)
    if skipped["pairs"] or skipped["images"]:
        data = data.subset(images, captions, f"{skipped['pairs']} unreadable or empty pairs left out")
    text_embeds, text_hidden, text_mask = encode_texts(
        model, processor, data.captions, text_batch_size, keep_hidden=keep_hidden, accelerator=accelerator
    )
    return EncodedSet(
        image_embeds, text_embeds, image_hidden, text_hidden, text_mask if keep_hidden else None, data, skipped
    )


# ---------------------------------------------------------------------------------------------------------------
# ranking


@torch.inference_mode()
def itm_log_odds_of_top_k(model, encoded: EncodedSet, itc_similarity: torch.Tensor, k: int, *, image_queries: bool,
                          batch_size: int = 256, accelerator=None) -> tuple[torch.Tensor, torch.Tensor]:
    """(top_index, log_odds), both (queries, k): each query's k best ITC candidates and their ITM match log-odds
    (logit "match" - logit "no match"). image_queries=True: TR, each image's k best captions; False: IR, each
    caption's k best images. The k x queries fused pairs are scored in batches of `batch_size` pairs."""
    scores = itc_similarity if image_queries else itc_similarity.t()  # (queries, candidates)
    n_queries, n_candidates = scores.shape
    k = min(k, n_candidates)
    top_index = scores.topk(k, dim=1).indices  # (queries, k)
    device = model.device
    per_batch = max(1, batch_size // k)
    itm = []
    show = accelerator is None or accelerator.is_local_main_process
    desc = f"ITM re-rank top-{k} ({'image' if image_queries else 'text'} queries)"
    with _split(torch.arange(n_queries), accelerator) as queries:
        for start in tqdm(range(0, len(queries), per_batch), desc=desc, disable=not show):
            query = queries[start : start + per_batch]
            candidate = top_index[query].reshape(-1)
            query = query.repeat_interleave(k)
            image_index, text_index = (query, candidate) if image_queries else (candidate, query)
            images, pair_image = image_index.unique(return_inverse=True)  # each image's keys / values once
            logits = model.get_itm_logits(
                attention_mask=encoded.text_mask[text_index].to(device),
                text_hidden_states=encoded.text_hidden[text_index].to(device),
                image_hidden_states=encoded.image_hidden[images].to(device),
                image_index=pair_image.to(device),
            )
            itm.append((logits[:, 1] - logits[:, 0]).float().cpu().view(-1, k))
    return top_index, _gather(torch.cat(itm) if itm else torch.empty(0, k), accelerator)


def place_top_k_first(scores: torch.Tensor, top_index: torch.Tensor, top_scores: torch.Tensor) -> torch.Tensor:
    """Row-wise scores where the candidates of `top_index` get `top_scores` and sit above every other candidate,
    whose order in `scores` is kept. The order is carried by integer ranks, not by shifted scores: shifting by a
    constant rounds nearly equal scores together or apart."""
    ranked = (top_scores.min() - 1.0) - strictly_greater_counts(scores)
    return ranked.scatter_(1, top_index, top_scores)


def itm_rerank(model, encoded: EncodedSet, itc_similarity: torch.Tensor, k: int, *, image_queries: bool,
               score: str = "itm", batch_size: int = 256, accelerator=None) -> torch.Tensor:
    """Scores (n_images, n_captions) of one direction after re-ranking each query's top-k ITC candidates.

    score="itm" (ALBEF): the k candidates are ordered by their ITM match log-odds alone. "itm+itc" (as BLIP's
    evaluation adds the ITC similarity to the ITM score): by ITM log-odds + ITC logit (cosine / the model's
    temperature), i.e. the product of the two heads' odds, so a confident ITC ranking is not thrown away. Either
    way the k candidates are placed above every other candidate, whose ITC order is kept.
    """
    rerank_mode(k, score)  # checks the name
    top_index, itm = itm_log_odds_of_top_k(
        model, encoded, itc_similarity, k, image_queries=image_queries, batch_size=batch_size, accelerator=accelerator
    )
    return _rerank_scores(model, itc_similarity, top_index, itm, image_queries, score)


@torch.inference_mode()
def _rerank_scores(model, itc_similarity, top_index, itm, image_queries: bool, score: str) -> torch.Tensor:
    scores = itc_similarity if image_queries else itc_similarity.t()
    if score == "itm+itc":
        itm = itm + model.logit_scale_value().float().cpu() * scores.gather(1, top_index).float().cpu()
    reranked = place_top_k_first(scores, top_index, itm)
    return reranked if image_queries else reranked.t()


def strictly_greater_counts(scores: torch.Tensor, chunk_elements: int = 1 << 24) -> torch.Tensor:
    """For every entry, how many entries of its row are strictly greater (float32): 0 for the row's best, equal
    entries get equal counts. A rank that keeps the row's order and ties exactly; rows are sorted in chunks."""
    n_rows, n_columns = scores.shape
    counts = torch.empty(n_rows, n_columns, dtype=torch.float32)
    step = max(1, chunk_elements // max(n_columns, 1))
    for start in range(0, n_rows, step):
        block = scores[start : start + step].float().cpu().contiguous()
        ascending = block.sort(dim=1).values
        not_greater = torch.searchsorted(ascending, block, right=True)  # entries <= each entry, itself included
        counts[start : start + step] = (n_columns - not_greater).float()
    return counts


def evaluate_retrieval(
    model,
    processor,
    data: RetrievalSet,
    *,
    rerank_k: int = 0,
    image_batch_size: int = 128,
    text_batch_size: int = 256,
    itm_batch_size: int = 256,
    accelerator=None,
    max_bad_fraction: float | None = 0.05,
) -> dict[str, dict]:
    """{"itc": metrics[, "itm_top{k}": metrics, "itm_itc_top{k}": metrics (re-ranked, see `itm_rerank`)], "timing":
    seconds and items per second, "skipped": what was left out (see `leave_out_bad_items`)}; the same on every
    process. The metrics are those of the readable items; more unreadable or empty (image, caption) pairs than
    `max_bad_fraction` (None: no limit) raise BadEvaluationData."""
    was_training = model.training
    model.eval()
    started = time.perf_counter()
    encoded = encode_set(
        model, processor, data, keep_hidden=rerank_k > 0, image_batch_size=image_batch_size,
        text_batch_size=text_batch_size, accelerator=accelerator, max_bad_fraction=max_bad_fraction,
    )
    data = encoded.data  # the readable items
    encode_seconds = time.perf_counter() - started
    similarity = encoded.image_embeds @ encoded.text_embeds.t()
    results = {"itc": retrieval_metrics(similarity, data.caption_to_image, data.relevance)}
    timing = {
        "encode_seconds": encode_seconds,
        "items_encoded_per_second": (len(data.images) + len(data.captions)) / max(encode_seconds, 1e-9),
    }
    if rerank_k > 0:
        started = time.perf_counter()
        # the ITM log-odds are computed once and ranked both ways: alone and with the ITC logit added
        top_k = {
            image_queries: itm_log_odds_of_top_k(model, encoded, similarity, rerank_k, image_queries=image_queries,
                                                 batch_size=itm_batch_size, accelerator=accelerator)
            for image_queries in (True, False)
        }
        timing["rerank_seconds"] = time.perf_counter() - started
        for score in RERANK_SCORES:
            by_image, by_text = (
                _rerank_scores(model, similarity, *top_k[image_queries], image_queries, score) for image_queries in (True, False)
            )
            results[rerank_mode(rerank_k, score)] = retrieval_metrics(
                by_image, data.caption_to_image, data.relevance, image_retrieval_similarity=by_text
            )
    model.train(was_training)
    results["timing"] = timing
    results["skipped"] = encoded.skipped
    return results


# ---------------------------------------------------------------------------------------------------------------
# command line


@dataclass
class EvaluationArguments:
    model: str = field(metadata={"help": "A SISC checkpoint folder (or Hub id) with its processor."})
    data: str = field(
        default="shapes",
        metadata={"help": "'shapes', a saved dataset folder, an imagefolder, a json/jsonl/csv/parquet file (ALBEF's "
                          "retrieval files), Karpathy JSON, a COCO captions file, webdataset shards or a Hub dataset id."},
    )
    split: str | None = field(
        default=None,
        metadata={"help": "Split to evaluate ('test', 'val'/'validation', ...); default 'test', or the whole file for a "
                          "data file, which has no splits."},
    )
    image_root: str | None = field(default=None, metadata={"help": "Folder that relative image paths are under."})
    data_format: str | None = field(default=None, metadata={"help": FORMAT_HELP})
    dataset_config: str | None = field(default=None, metadata={"help": "Configuration of a Hub dataset (load_dataset's name=)."})
    image_column: str | None = field(
        default=None, metadata={"help": f"Image column (default: the first of {', '.join(IMAGE_COLUMNS)} present)."}
    )
    caption_column: str | None = field(
        default=None, metadata={"help": f"Caption column (default: the first of {', '.join(CAPTION_COLUMNS)} present)."}
    )
    shapes_preset: str = field(default="default", metadata={"help": "Embedded dataset preset: 'default', 'low', 'high'."})
    data_cache_dir: str = "data_cache/shapes"
    max_images: int | None = field(default=None, metadata={"help": "Evaluate on the first N images only."})
    rerank_k: int = field(default=16, metadata={"help": "ITM re-ranking of the top k ITC candidates (0: ITC only)."})
    image_batch_size: int = 128
    text_batch_size: int = 256
    itm_batch_size: int = field(default=256, metadata={"help": "Image-text pairs per ITM forward pass."})
    max_bad_fraction: float = field(
        default=0.05, metadata={"help": "Fail when more than this fraction of the (image, caption) pairs is unreadable or empty."}
    )
    output_json: str | None = field(
        default=None, metadata={"help": "Where the results go (default: outputs/retrieval/<model>_<data>_<split>.json)."}
    )


def format_table(results: dict[str, dict]) -> str:
    """Metrics as rows, ranking modes as columns."""
    modes = [name for name in results if name not in ("timing", "skipped")]
    keys = list(results[modes[0]])
    lines = [f"{'metric':<16}" + "".join(f"{mode:>14}" for mode in modes)]
    for key in keys:
        cells = []
        for mode in modes:
            value = results[mode].get(key)
            cells.append(f"{value:>14d}" if isinstance(value, int) else f"{value:>14.2f}")
        lines.append(f"{key:<16}" + "".join(cells))
    return "\n".join(lines)


def default_output_path(args: EvaluationArguments) -> str:
    def name(path: str) -> str:
        return os.path.splitext(os.path.basename(os.path.normpath(path)))[0] or "model"

    split = args.split or ("test" if args.data == "shapes" or has_own_splits(args.data, args.data_format, args.dataset_config) else "all")
    return os.path.join("outputs", "retrieval", f"{name(args.model)}_{name(args.data)}_{split}.json")


def main(argv=None) -> dict:
    (args,) = HfArgumentParser(EvaluationArguments).parse_args_into_dataclasses(args=argv)
    accelerator = Accelerator()
    check_launch(accelerator, "train/evaluate_retrieval.py")
    model = SiscModel.from_pretrained(args.model).to(accelerator.device)
    processor = AutoProcessor.from_pretrained(args.model, trust_remote_code=True)
    with accelerator.main_process_first():
        data = load_retrieval_set(
            args.data, args.split, image_root=args.image_root, image_column=args.image_column,
            caption_column=args.caption_column, shapes_config=ShapesConfig.preset(args.shapes_preset),
            data_cache_dir=args.data_cache_dir, max_images=args.max_images, data_format=args.data_format,
            dataset_config=args.dataset_config,
        )
    results = evaluate_retrieval(
        model, processor, data, rerank_k=args.rerank_k, image_batch_size=args.image_batch_size,
        text_batch_size=args.text_batch_size, itm_batch_size=args.itm_batch_size, accelerator=accelerator,
        max_bad_fraction=args.max_bad_fraction,
    )
    summary = {
        "model": args.model,
        "data": data.description,
        "num_images": len(data.images),
        "num_captions": len(data.captions),
        "num_processes": accelerator.num_processes,
        "arguments": asdict(args),
        "results": results,
    }
    if accelerator.is_main_process:
        path = args.output_json or default_output_path(args)
        os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
        with open(path, "w") as handle:
            json.dump(summary, handle, indent=2)
        print(f"\n{data.description}: {len(data.images)} images, {len(data.captions)} captions")
        if skip_report(results["skipped"]):
            print(f"{skip_report(results['skipped'])}; the metrics are those of the readable items")
        print(format_table(results))
        print(f"results written to {path}")
    accelerator.wait_for_everyone()
    return summary


if __name__ == "__main__":
    main()
