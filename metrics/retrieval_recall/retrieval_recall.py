"""`evaluate` metric module: image-text retrieval R@K (TR / IR), R@K-any and mAP@R of a similarity matrix.

A thin wrapper: the ranking code exists once, in the SISC package (``sisc_train.evaluation.retrieval_metrics``),
which this module imports. SISC must therefore be installed where the metric is used: ``pip install -e <repo>`` in a
checkout (``scripts/setup_env.sh`` does it) or ``pip install git+<URL of the SISC repository>``. ``evaluate.load``
imports a cached copy of this script, so the import goes through the installed package, never through this file's
location.
"""

import datasets
import evaluate
import numpy as np

# Indented on purpose: evaluate checks the top-level imports of a metric script itself, and its message would only
# name the package; this one says how to install SISC.
try:
    from sisc_train.evaluation.retrieval_metrics import retrieval_metrics
except ImportError as error:
    if error.name not in ("sisc_train", "sisc_train.evaluation", "sisc_train.evaluation.retrieval_metrics"):
        raise  # SISC is installed, but something it imports is not: that error says what
    raise ImportError(
        "the retrieval_recall metric needs the SISC package (sisc_train), which is not installed in this Python "
        "environment: run `pip install -e <repo>` in a SISC checkout (scripts/setup_env.sh does it), or "
        "`pip install git+<URL of the SISC repository>`"
    ) from error

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
    """Image-text retrieval R@K / R@K-any / mAP@R, computed by sisc_train.evaluation.retrieval_metrics."""

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
