"""`evaluate` metric module: image-text retrieval R@K (TR / IR), R@K-any and mAP@R of a similarity matrix.

A thin wrapper: the ranking code exists once, in the SISC repository's ``train/retrieval_metrics.py``.

How the implementation is found (and why): ``evaluate.load`` copies this script into its modules cache
(``$HF_MODULES_CACHE/evaluate_modules/metrics/retrieval_recall/<hash>/``) and imports the copy from there, so
neither ``from sisc_train.evaluation.retrieval_metrics import ...`` (needs the repo root on ``sys.path``) nor a relative import
(evaluate copies only ``.py`` files lying next to the script, which would mean duplicating the code) reaches the
implementation. Instead, at import time, the repository root is taken from, in this order:

1. the ``SISC_REPO_ROOT`` environment variable, when set (explicit: nothing else is tried);
2. this file's own location, when it is imported in place (``<root>/metrics/retrieval_recall/``);
3. the ``path`` given to the ``evaluate.load`` call that is importing this copy (found on the call stack): the
   checkout the user asked for, even when another checkout with the same script filled the cache first;
4. the original script path that evaluate records next to its cached copy (``retrieval_recall.json``).

``<root>/train/retrieval_metrics.py`` is then loaded by file path (nothing is added to ``sys.path``, so an unrelated
``train`` package cannot shadow it). The cache copy is keyed by this script's content only: when two checkouts hold
the same script, the record names the one loaded first, which is why the caller's path (3) comes before it.
"""

import importlib.util
import json
import os
import sys
from pathlib import Path

import datasets
import evaluate
import numpy as np

REPO_ROOT_ENV = "SISC_REPO_ROOT"
IMPLEMENTATION = Path("train", "retrieval_metrics.py")
# evaluate's modules cache writes {"original file path": ..., "local file path": ...} to <script name>.json
EVALUATE_RECORD_KEY = "original file path"


def _root_of(script: Path) -> Path:
    """<root> of <root>/metrics/retrieval_recall/retrieval_recall.py."""
    return script.parents[2] if len(script.parents) > 2 else script.parent


def _candidate_roots():
    """(source, repository root) pairs to try, best first; see the module docstring."""
    explicit = os.environ.get(REPO_ROOT_ENV)
    if explicit:
        return [(f"${REPO_ROOT_ENV}", Path(explicit).expanduser())]
    here = Path(__file__).resolve()
    candidates = [("this script's location", _root_of(here))]
    requested = _path_given_to_evaluate_load()
    if requested is not None:
        script = requested if requested.suffix == ".py" else requested / here.name
        candidates.append(("the path given to evaluate.load", _root_of(script)))
    record = here.with_suffix(".json")
    try:
        original = json.loads(record.read_text(encoding="utf-8")).get(EVALUATE_RECORD_KEY)
    except (OSError, ValueError):
        original = None
    if original:
        candidates.append((f"evaluate's record {record}", _root_of(Path(original).resolve())))
    return candidates


def _path_given_to_evaluate_load():
    """The `path` argument of the `evaluate.load` call importing this module, when it names a local path."""
    frame = sys._getframe(1)
    while frame is not None:
        if frame.f_code.co_name == "load" and frame.f_globals.get("__name__") == "evaluate.loading":
            path = frame.f_locals.get("path")
            if isinstance(path, (str, os.PathLike)) and os.path.exists(path):
                return Path(path).resolve()
            return None
        frame = frame.f_back
    return None


def _load_implementation():
    """train/retrieval_metrics.py of the first candidate root that has it, loaded by file path."""
    tried = []
    for source, root in _candidate_roots():
        path = (root / IMPLEMENTATION).resolve()
        if path.is_file():
            break
        tried.append(f"{path} (from {source})")
    else:
        raise ImportError(
            "retrieval_recall wraps train/retrieval_metrics.py of the SISC repository and could not find it; "
            f"tried: {'; '.join(tried)}. Load the metric from a SISC checkout "
            f"(evaluate.load('<repo>/metrics/retrieval_recall')) or set {REPO_ROOT_ENV} to the repository root."
        )
    already_imported = sys.modules.get("sisc_train.evaluation.retrieval_metrics")
    if already_imported is not None and Path(already_imported.__file__).resolve() == path:
        return already_imported  # the very same file, imported the usual way: reuse it
    spec = importlib.util.spec_from_file_location("sisc_retrieval_metrics", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


implementation = _load_implementation()  # implementation.__file__ tells which checkout is used
retrieval_metrics = implementation.retrieval_metrics

_DESCRIPTION = """\
Image-text retrieval metrics of a similarity matrix, as reported in the SRCL paper (ALBEF protocol).
TR (text retrieval) ranks all captions for each image; IR (image retrieval) ranks all images for each caption.
R@K is the percentage of queries whose top K holds a correct item: for TR any of the image's own captions, for IR
the caption's own image. With a ground-truth relevance matrix (a caption may be true of several images), it also
reports R@K-any (a hit when any relevant item is in the top K) and mAP@R (Musgrave et al. 2020), x 100.
Ties are ranked pessimistically: a correct item tied with an incorrect one is ranked after it.
"""

_CITATION = """\
@inproceedings{jiang-etal-2023-vision,
  title         = {Vision Language Pre-training by Contrastive Learning with Cross-Modal Similarity Regulation},
  author        = {Jiang, Chaoya and Ye, Wei and Xu, Haiyang and Huang, Songfang and Huang, Fei and Zhang, Shikun},
  booktitle     = {Proceedings of the 61st Annual Meeting of the Association for Computational Linguistics (Volume 1: Long Papers)},
  year          = {2023},
  address       = {Toronto, Canada},
  publisher     = {Association for Computational Linguistics},
  pages         = {14660--14679},
  doi           = {10.18653/v1/2023.acl-long.819},
  url           = {https://aclanthology.org/2023.acl-long.819},
  eprint        = {2305.04474},
  archivePrefix = {arXiv}
}
"""

_KWARGS_DESCRIPTION = """
One example is one IMAGE (a TR query); the captions are the columns shared by all examples.

Args:
    predictions (`list` of `list` of `float`): for each image, its similarity to every caption
        (n_images rows of n_captions scores; all rows must have the same length). Stored as float32.
    references (`list` of `list` of `int`): for each image, the indices of its own captions (may be empty).
        Every caption index 0..n_captions-1 must belong to exactly one image.
    relevance (optional, bool array-like of shape (n_captions, n_images)): relevance[c][i] is True when caption c
        is true of image i; it must mark each caption's own image. Enables the *_any, *_map_r metrics.
    ks (`tuple` of `int`, defaults to (1, 5, 10)): the K of the R@K metrics.

Returns:
    tr_r{K}, ir_r{K} (`float`, 0-100): R@K of text retrieval (image queries) and image retrieval (caption queries).
    r_mean (`float`): mean of all the tr_r{K} and ir_r{K}.
    tr_no_caption (`int`): images without a caption, left out of the TR means.
    With relevance: tr_r{K}_any, ir_r{K}_any (`float`, 0-100), tr_map_r, ir_map_r (`float`, mAP@R x 100) and
    tr_no_relevant, ir_no_relevant (`int`, queries without any relevant item, left out of these means).
    A mean over no query is NaN.

Examples:
    Image 0 owns captions 0 and 1, image 1 owns caption 2, image 2 owns caption 3.

    >>> retrieval_recall = evaluate.load("metrics/retrieval_recall")
    >>> results = retrieval_recall.compute(
    ...     predictions=[[0.9, 0.2, 0.8, 0.1], [0.7, 0.1, 0.6, 0.25], [0.2, 0.5, 0.4, 0.3]],
    ...     references=[[0, 1], [2], [3]],
    ...     ks=(1, 5),
    ... )
    >>> {name: round(value, 2) for name, value in results.items()}
    {'tr_r1': 33.33, 'tr_r5': 100.0, 'ir_r1': 50.0, 'ir_r5': 100.0, 'r_mean': 70.83, 'tr_no_caption': 0}
"""


@evaluate.utils.file_utils.add_start_docstrings(_DESCRIPTION, _KWARGS_DESCRIPTION)
class RetrievalRecall(evaluate.Metric):
    """Image-text retrieval R@K / R@K-any / mAP@R; see the module docstring for how the implementation is found."""

    def _info(self):
        return evaluate.MetricInfo(
            description=_DESCRIPTION,
            citation=_CITATION,
            inputs_description=_KWARGS_DESCRIPTION,
            features=datasets.Features(
                {
                    "predictions": datasets.Sequence(datasets.Value("float32")),
                    "references": datasets.Sequence(datasets.Value("int32")),
                }
            ),
            reference_urls=["https://aclanthology.org/2023.acl-long.819", "https://arxiv.org/abs/2305.04474"],
        )

    def _compute(self, predictions, references, relevance=None, ks=(1, 5, 10)):
        similarity = _similarity_matrix(predictions)
        caption_to_image = _caption_to_image(references, n_captions=similarity.shape[1])
        return retrieval_metrics(similarity, caption_to_image, relevance, ks)


def _similarity_matrix(predictions) -> np.ndarray:
    """(n_images, n_captions) float32 matrix; every image row must score the same captions."""
    n_captions = len(predictions[0]) if len(predictions) else 0
    for image, row in enumerate(predictions):
        if len(row) != n_captions:
            raise ValueError(
                f"predictions are ragged: row 0 scores {n_captions} captions but row {image} scores {len(row)}; "
                "each image row must hold its similarity to every caption"
            )
    return np.asarray(predictions, dtype=np.float32).reshape(len(predictions), n_captions)


def _caption_to_image(references, n_captions: int) -> np.ndarray:
    """Invert the per-image caption lists; every caption must belong to exactly one image."""
    owners = [[] for _ in range(n_captions)]
    for image, captions in enumerate(references):
        for caption in captions:
            if not 0 <= caption < n_captions:
                raise ValueError(
                    f"references[{image}] holds caption index {caption}, outside [0, {n_captions}) "
                    f"(each predictions row scores {n_captions} captions)"
                )
            if image not in owners[caption]:  # a caption listed twice by the same image is still one owner
                owners[caption].append(image)
    for caption, images in enumerate(owners):
        if len(images) != 1:
            held_by = f"images {images}" if images else "no image"
            raise ValueError(
                f"caption {caption} belongs to {held_by}: every caption index 0..{n_captions - 1} must be in the "
                "references of exactly one image"
            )
    return np.array([images[0] for images in owners], dtype=np.int64)
