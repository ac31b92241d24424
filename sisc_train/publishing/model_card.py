"""Model cards for SISC checkpoints: Hub metadata (model-index with the retrieval results) + a rendered README.md.

    from sisc_train.publishing.model_card import render_model_card
    card = render_model_card("outputs/sisc-small", model_config=config.to_dict(), metrics=metrics,
                             dataset_name="shapes", dataset_description="...", num_train_pairs=4000,
                             hyperparameters={"learning_rate": 1e-4})

or, from the files a training run leaves behind (results.json holds the metrics under "metrics"):

    python -m sisc_train.publishing.model_card outputs/sisc-small --metrics outputs/sisc-small/results.json --dataset-name shapes

The card is rendered from `model_cards/template.md` (a Jinja template in `huggingface_hub`'s
`ModelCard.from_template` format) and written to `<output_dir>/README.md`.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import re
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from huggingface_hub import EvalResult, ModelCard, ModelCardData

REPO_ROOT = Path(__file__).resolve().parents[2]  # the templates live in <repo>/model_cards/
TEMPLATE_PATH = REPO_ROOT / "model_cards" / "template.md"
TAGS = ["sisc", "vision-language", "contrastive-learning", "image-text-retrieval"]
EVAL_TASK_TYPE = "image-text-retrieval"
SYNTHETIC_DATASETS = ("shapes",)  # the embedded test dataset of this repo

# Keys of sisc_train.evaluation.retrieval_metrics that are counts of skipped queries, not scores: shown as notes, not as results.
COUNT_KEYS = {
    "tr_no_caption": "image queries without any own caption, left out of the standard TR recalls",
    "tr_no_relevant": "image queries without any relevant caption, left out of the relevance-aware TR metrics",
    "ir_no_relevant": "caption queries without any relevant image, left out of the relevance-aware IR metrics",
}
_HUB_ID = re.compile(r"^[A-Za-z0-9][\w.-]*(/[\w.-]+)?$")


def metric_display_name(key: str) -> str:
    """A readable name for a `sisc_train.evaluation.retrieval_metrics` key (`tr_r1` -> "TR@1 (image → text)"); other keys unchanged."""
    match = re.fullmatch(r"(tr|ir)_r(\d+)(_any)?", key)
    if match:
        direction, k, any_relevant = match.groups()
        arrow = "image → text" if direction == "tr" else "text → image"
        suffix = ", any relevant " + ("caption" if direction == "tr" else "image") if any_relevant else ""
        return f"{direction.upper()}@{k} ({arrow}{suffix})"
    if key in ("tr_map_r", "ir_map_r"):
        return f"{key[:2].upper()} mAP@R ({'image → text' if key.startswith('tr') else 'text → image'})"
    if key == "r_mean":
        return "Mean of the TR and IR recalls"
    return key


def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def _metric_sort_key(key: str):
    """Standard TR/IR recalls first (by direction, K), then r_mean, the relevance-aware ones, then anything else."""
    match = re.fullmatch(r"(tr|ir)_r(\d+)(_any)?", key)
    if match:
        return (2 if match.group(3) else 0, match.group(1) == "ir", int(match.group(2)), key)
    if key == "r_mean":
        return (1, False, 0, key)
    if key in ("tr_map_r", "ir_map_r"):
        return (3, key == "ir_map_r", 0, key)
    return (4, False, 0, key)


def _format_value(value: Any) -> str:
    if value is None:
        text = "none"
    elif isinstance(value, bool):
        text = str(value).lower()
    elif isinstance(value, float):
        text = f"{value:g}"
    elif isinstance(value, (dict, list, tuple)):
        text = json.dumps(value, default=str)
    else:
        text = str(value)
    return text.replace("|", "\\|").replace("\n", " ")  # keep markdown tables intact


def _looks_like_hub_id(name: str | None) -> bool:
    """A Hub repo id ("name" or "namespace/name") and not a folder or file on this machine."""
    return bool(name) and bool(_HUB_ID.match(name)) and not os.path.exists(name)


def _architecture_rows(config: Mapping[str, Any]) -> list[tuple[str, str]]:
    def sub(name) -> Mapping[str, Any]:
        value = config.get(name)
        return value if isinstance(value, Mapping) else {}

    def describe(parts) -> str:
        text = ", ".join(part for part in parts if part)
        return text or "not recorded"

    def part(template: str, *values) -> str | None:
        return template.format(*values) if all(v is not None for v in values) else None

    vision, text, fusion = sub("vision_config"), sub("text_config"), sub("fusion_encoder_config")
    kind = {"vit": "ViT", "clip_vision_model": "CLIP ViT"}.get(vision.get("model_type"), vision.get("model_type"))
    rows = [
        (
            "Image encoder",
            describe(
                [
                    part("{}", kind),
                    part("{} layers", vision.get("num_hidden_layers")),
                    part("hidden size {}", vision.get("hidden_size")),
                    part("{} px input", vision.get("image_size")),
                    part("{0}x{0} patches", vision.get("patch_size")),
                    part("convolutional stem ({} channels) in place of the patch projection",
                         "-".join(map(str, config.get("vision_conv_stem") or [])) or None),
                    part("image embedding from the maximum over the patch states",
                         True if config.get("image_pooling") == "max" else None),
                ]
            ),
        ),
        (
            "Text encoder",
            describe(
                [
                    "BERT" if text else None,
                    part("{} layers", text.get("num_hidden_layers")),
                    part("hidden size {}", text.get("hidden_size")),
                    part("vocabulary {}", text.get("vocab_size")),
                    part("dropout {}", text.get("hidden_dropout_prob")),
                ]
            ),
        ),
        (
            "Fusion encoder",
            describe(
                [
                    "BERT layers with cross-attention to the image patches" if fusion else None,
                    part("{} layers", fusion.get("num_hidden_layers")),
                    part("hidden size {}", fusion.get("hidden_size")),
                    part("dropout {}", fusion.get("hidden_dropout_prob")),
                ]
            ),
        ),
        (
            "Shared embedding",
            f"{config['embed_dim']}-d, L2-normalised, learned temperature" if config.get("embed_dim") else "not recorded",
        ),
    ]
    return rows


PEER_OBJECTIVES = {
    "soft_infonce": "Soft-InfoNCE, Li et al. 2023: negatives weighted by a clipped linear function of their similarity",
    "debiased": "the debiased contrastive loss, Chuang et al. 2020",
    "hard_negatives": "hard-negative weighting, Robinson et al. 2021",
    "siglip": "SigLIP's sigmoid loss per pair, Zhai et al. 2023",
    "multi_positive": "InfoNCE with every pair known to match (same image or same caption) as a positive",
}
PEER_OBJECTIVE_KNOBS = {
    "soft_infonce": ("soft_infonce_alpha", "soft_infonce_temperature", "soft_infonce_min_weight"),
    "debiased": ("debiased_prior",),
    "hard_negatives": ("hard_negative_beta", "debiased_prior"),
    "siglip": (),
    "multi_positive": ("label_smoothing",),
}


def _loss_rows(config: Mapping[str, Any], teacher: str | None) -> tuple[str, list[tuple[str, str]], str]:
    """(contrastive loss label, settings table rows, note) from the SiscConfig fields."""
    missing = "not recorded"

    def get(key):
        return config.get(key) if key in config else missing

    loss = config.get("contrastive_loss")
    label = {
        "srcl": "SRCL, the similarity-regulated contrastive loss",
        "infonce": "plain InfoNCE contrastive loss (the SRCL regulation switched off, as a baseline or teacher)",
        **PEER_OBJECTIVES,
    }.get(loss, f"the contrastive loss {loss!r}" if loss else "a contrastive loss (not recorded)")
    norm = config.get("weight_norm")
    norm_text = {
        "mean": "mean: 1/s divided by its mean over each anchor's negatives (delta cancels)",
        "softmax": "softmax: (N - 1) * softmax(delta / s) over each anchor's negatives (delta sets the sharpness)",
    }.get(norm, _format_value(get("weight_norm")))
    threshold = get("removal_threshold")
    if threshold is None:
        threshold_text = "none: the regulated weights are used as they are"
    elif threshold == missing:
        threshold_text = missing
    else:
        threshold_text = (
            f"{_format_value(threshold)}: negatives whose normalised weight falls below it are dropped, "
            "all others keep weight 1 (the paper's sec. 4.3 heuristic)"
        )
    schedule = config.get("alpha_schedule")
    alpha_start, alpha_end, alpha_steps = get("alpha_start"), get("alpha_end"), get("alpha_steps")
    if schedule == "constant":
        alpha_text = f"constant at {_format_value(alpha_start)}"
    else:
        alpha_text = (
            f"{_format_value(alpha_start)} → {_format_value(alpha_end)} over {_format_value(alpha_steps)} steps, "
            f"{_format_value(get('alpha_schedule'))}"
        )
    teacher_text = (
        f"yes: `{teacher}` (frozen; its similarities are mixed with the model's by alpha)"
        if teacher
        else "none: the weights come from the model's own (detached) similarities; alpha is not used"
    )
    rows = [
        ("Contrastive loss (`contrastive_loss`)", _format_value(get("contrastive_loss"))),
        ("Weight normalisation (`weight_norm`)", norm_text),
        ("Scaling factor (`delta`)", _format_value(get("delta"))),
        ("Removal threshold (`removal_threshold`)", threshold_text),
        ("Alpha schedule start (`alpha_start`)", _format_value(alpha_start)),
        ("Alpha schedule end (`alpha_end`)", _format_value(alpha_end)),
        ("Alpha schedule steps (`alpha_steps`)", _format_value(alpha_steps)),
        ("Alpha schedule shape (`alpha_schedule`)", _format_value(get("alpha_schedule"))),
        ("Alpha (teacher share of the mixed similarity)", alpha_text),
        ("Teacher", teacher_text),
    ]
    note = ""
    if loss == "infonce":
        note = (
            "This model was trained with plain InfoNCE: every negative has weight 1, so the regulation settings "
            "below are recorded in its config but were not used."
        )
    elif loss in PEER_OBJECTIVES:
        knobs = ", ".join(f"`{key}` = {_format_value(get(key))}" for key in PEER_OBJECTIVE_KNOBS[loss])
        note = (
            f"This model was trained with a peer objective of the false-negative benchmark ({PEER_OBJECTIVES[loss]}"
            + (f"; {knobs}" if knobs else "")
            + "), not SRCL: the regulation settings below are recorded in its config but were not used."
        )
    elif loss == "srcl":
        note = (
            "Each negative j of an anchor i gets the weight w_ij = Norm(delta / s_ij), where s_ij = alpha * "
            "exp(cos_teacher) + (1 - alpha) * exp(cos_model) and Norm makes the weights of each anchor's "
            "negatives average to 1."
        )
    return label, rows, note


def _eval_results(
    metrics: Mapping[str, Any], dataset_type: str, dataset_name: str, split: str, task_name: str, key_prefix: str = "",
    task_type: str = EVAL_TASK_TYPE, display_names: Mapping[str, str] | None = None,
) -> list[EvalResult]:
    display_names = display_names or {}
    results = []
    for key in sorted(metrics, key=_metric_sort_key):
        value = metrics[key]
        if key in COUNT_KEYS or not _is_number(value) or not math.isfinite(value):
            continue
        results.append(
            EvalResult(
                task_type=task_type,
                task_name=task_name,
                dataset_type=dataset_type,
                dataset_name=dataset_name,
                dataset_split=split,
                metric_type=key_prefix + key,
                metric_name=display_names.get(key) or metric_display_name(key),
                metric_value=round(float(value), 4),
            )
        )
    return results


def _objective_text(config: Mapping[str, Any]) -> str:
    """The losses a model was trained with, from the config's loss weights (a weight of 0 switches a loss off)."""
    share, end = config.get("itm_random_negatives") or 0.0, config.get("itm_random_negatives_end")
    hard = "hard negatives sampled from the contrastive similarities"
    if end is not None:
        negatives = f"a share of random negatives moving from {share:.0%} to {end:.0%} over training, the others {hard}"
    elif share:
        negatives = f"{share:.0%} of its negatives drawn at random, the others {hard}"
    else:
        negatives = hard
    parts = [
        ("itc_loss_weight", "image-text contrastive loss (ITC, below)"),
        ("itm_loss_weight", f"image-text matching (ITM, with {negatives})"),
        ("mlm_loss_weight", "masked language modelling (MLM)"),
    ]
    used = [text for key, text in parts if config.get(key, 1.0) != 0]
    off = [key.split("_")[0].upper() for key, _ in parts if config.get(key, 1.0) == 0]
    # the auxiliary losses beyond ALBEF's three: named only when on (they are off by default)
    extra = [(key, text) for key, text in (
        ("negative_caption_loss_weight", "a negative-caption loss (each image against its caption with one word swapped)"),
        ("word_prediction_loss_weight", "word prediction (the caption's words predicted from the image)"),
    ) if config.get(key, 0.0) > 0]
    used += [f"{text}, weight {config[key]:g}" for key, text in extra]
    text = " + ".join(used) if used else "not recorded"
    return text + (f"; {' and '.join(off)} switched off" if off else "" if extra else ", as in ALBEF")


def _result_rows(metrics: Mapping[str, Any]) -> list[tuple[str, str, str]]:
    return [
        (metric_display_name(key), key, f"{value:.2f}" if math.isfinite(value) else "n/a (no query to score)")
        for key in sorted(metrics, key=_metric_sort_key)
        if key not in COUNT_KEYS and _is_number(value := metrics[key])
    ]


def render_model_card(
    output_dir: str | os.PathLike,
    *,
    model_config: Mapping[str, Any],
    metrics: Mapping[str, float],
    dataset_name: str,
    dataset_description: str,
    num_train_pairs: int | None,
    hyperparameters: Mapping[str, Any],
    task: str = "zero-shot-image-classification",
    model_name: str | None = None,
    base_model: str | None = None,
    teacher: str | None = None,
    eval_split: str = "test",
    eval_dataset_name: str | None = None,
    rerank_metrics: Mapping[str, float] | None = None,
    rerank_k: int | None = None,
    rerank_mode: str | None = None,
    fine_tuned_for: str | None = None,
    repo_id: str | None = None,
    template_path: str | os.PathLike | None = None,
    task_results: Mapping[str, Any] | None = None,
) -> ModelCard:
    """Build the card's metadata, render `model_cards/template.md`, write `<output_dir>/README.md`, return the card.

    Args:
        output_dir: the checkpoint folder (created if needed); README.md is written there.
        model_config: `SiscConfig.to_dict()`; only the architecture sizes and the loss / regulation fields are read,
            and missing ones are shown as "not recorded".
        metrics: `sisc_train.evaluation.retrieval_metrics` output (percentages); NaN and non-numeric values and the `*_no_*` counts
            stay out of the model-index (the counts appear as notes under the results table).
        dataset_name: a Hub dataset id, a local path, or "shapes" (the embedded synthetic dataset).
        num_train_pairs: number of training image-text pairs, None when unknown (streamed data).
        hyperparameters: shown as a table.
        task: the Hub pipeline tag.
        model_name: name in the title and the model-index (default: the name of `output_dir`).
        base_model: checkpoint the training started from; it goes into the metadata only when it is a Hub id.
        teacher: the frozen teacher's name or path, None when no teacher was used.
        eval_split: the split the metrics were computed on.
        eval_dataset_name: the data the metrics were computed on when not `dataset_name` (a separate evaluation file).
        rerank_metrics: the same metrics after ITM re-ranking of each query's top `rerank_k` ITC candidates
            (`train/evaluate_retrieval.py`); a second results table and model-index entries whose metric types
            are prefixed `<rerank_mode>_`.
        rerank_mode: the re-ranking's results key (`sisc_train.evaluation.retrieval_metrics.rerank_mode`):
            `itm_top{k}` (the ITM head alone, ALBEF; the default) or `itm_itc_top{k}` (ITM + ITC).
        fine_tuned_for: the downstream task the model was fine-tuned for (e.g. "image-text retrieval"); None for
            a pretrained model, whose results are zero-shot.
        repo_id: the path shown in the usage snippet (default: `model_name`).
        template_path: another Jinja template (default: `model_cards/template.md`).
        task_results: a downstream task's results instead of retrieval metrics (VQA, NLVR2), a dict with keys
            `task_type` (model-index task type, e.g. "visual-question-answering"), `task_name`, `metrics` ({key:
            value} per split: {"test": {...}, "dev": {...}}), optional `display_names` ({key: readable name}),
            `tags` (extra tags) and `template_vars` (passed to the template). The default template for it is
            `model_cards/template_task.md`; `metrics`, `rerank_metrics` and `eval_split` are then ignored.
    """
    output_dir = Path(output_dir)
    config = dict(model_config or {})
    metrics = dict(metrics or {})
    model_name = model_name or output_dir.resolve().name or "sisc-model"
    dataset_label = str(dataset_name) if dataset_name else "unknown dataset"
    dataset_type = dataset_label if _looks_like_hub_id(dataset_label) else Path(dataset_label).name or dataset_label
    synthetic = dataset_label.lower() in SYNTHETIC_DATASETS

    if task_results is not None:
        return _render_task_card(
            output_dir, config, dict(task_results), dataset_label, dataset_type, synthetic, model_name,
            dataset_description, num_train_pairs, hyperparameters, task, base_model, fine_tuned_for, repo_id,
            template_path,
        )

    setting = "after fine-tuning" if fine_tuned_for else "zero-shot"
    eval_label = str(eval_dataset_name) if eval_dataset_name else dataset_label
    eval_type = eval_label if _looks_like_hub_id(eval_label) else Path(eval_label).name or eval_label
    eval_results = _eval_results(metrics, eval_type, eval_label, eval_split, f"Image-text retrieval ({setting}, ITC)")
    rerank_with_itc = False
    if rerank_metrics:
        if not rerank_k:
            raise ValueError("rerank_metrics need the rerank_k they were computed with")
        rerank_mode = rerank_mode or f"itm_top{rerank_k}"
        rerank_with_itc = rerank_mode.startswith("itm_itc_")
        eval_results += _eval_results(
            rerank_metrics, eval_type, eval_label, eval_split,
            f"Image-text retrieval ({setting}, {'ITM + ITC' if rerank_with_itc else 'ITM'} re-ranking of the top {rerank_k})",
            f"{rerank_mode}_",
        )

    card_data = ModelCardData(
        library_name="transformers",
        license="apache-2.0",
        tags=list(TAGS),
        pipeline_tag=task,
        datasets=[dataset_label] if _looks_like_hub_id(dataset_label) else None,
        base_model=base_model if _looks_like_hub_id(base_model) else None,
        model_name=model_name,
        eval_results=eval_results or None,
    )

    contrastive_label, loss_rows, regulation_note = _loss_rows(config, teacher)
    result_rows = _result_rows(metrics)
    result_notes = [
        f"`{key}` = {metrics[key]}: {COUNT_KEYS[key]}" for key in COUNT_KEYS if _is_number(metrics.get(key)) and metrics[key]
    ]
    usage_texts = ["a red star", "a green circle and a red square"] if synthetic else ["a photo of a cat", "a photo of a dog"]

    card = ModelCard.from_template(
        card_data,
        template_path=str(template_path or TEMPLATE_PATH),
        model_name=model_name,
        contrastive_loss_label=contrastive_label,
        base_model_text=(f"`{base_model}`" if base_model else ""),
        synthetic_data=synthetic,
        architecture_rows=_architecture_rows(config),
        dataset_name=dataset_label,
        dataset_description=dataset_description or "not given",
        num_train_pairs_text=f"{num_train_pairs:,}" if num_train_pairs is not None else "unknown (streamed or not counted)",
        loss_rows=loss_rows,
        regulation_note=regulation_note,
        hyperparameter_rows=[(f"`{name}`", _format_value(value)) for name, value in (hyperparameters or {}).items()],
        result_rows=result_rows,
        rerank_rows=_result_rows(rerank_metrics or {}),
        rerank_k=rerank_k,
        rerank_prefix=rerank_mode if rerank_metrics else None,
        rerank_with_itc=rerank_with_itc,
        fine_tuned_for=fine_tuned_for,
        objective_text=_objective_text(config),
        result_notes=result_notes,
        eval_split=eval_split,
        eval_dataset_name=eval_label,
        usage_path=json.dumps(str(repo_id or model_name), ensure_ascii=False),  # a valid Python string literal
        usage_texts=json.dumps(usage_texts, ensure_ascii=False),
    )
    output_dir.mkdir(parents=True, exist_ok=True)
    card.save(output_dir / "README.md")
    return card


TASK_TEMPLATE_PATH = REPO_ROOT / "model_cards" / "template_task.md"


def _render_task_card(output_dir, config, task_results, dataset_label, dataset_type, synthetic, model_name,
                      dataset_description, num_train_pairs, hyperparameters, task, base_model, fine_tuned_for, repo_id,
                      template_path) -> ModelCard:
    """The card of a downstream-task model (see `render_model_card(task_results=...)`)."""
    for key in ("task_type", "task_name", "metrics"):
        if key not in task_results:
            raise ValueError(f"task_results needs the key {key!r}")
    names = dict(task_results.get("display_names") or {})
    eval_results, split_rows = [], []
    for split, split_metrics in task_results["metrics"].items():
        split_metrics = dict(split_metrics or {})
        eval_results += _eval_results(
            split_metrics, dataset_type, dataset_label, split, task_results["task_name"],
            task_type=task_results["task_type"], display_names=names,
        )
        for key, value in split_metrics.items():
            if _is_number(value):
                shown = f"{value:.2f}" if isinstance(value, float) and math.isfinite(value) else _format_value(value)
                split_rows.append((split, names.get(key, key), key, shown))
    card_data = ModelCardData(
        library_name="transformers",
        license="apache-2.0",
        tags=[t for t in TAGS if t != "image-text-retrieval"] + list(task_results.get("tags") or []),
        pipeline_tag=task,
        datasets=[dataset_label] if _looks_like_hub_id(dataset_label) else None,
        base_model=base_model if _looks_like_hub_id(base_model) else None,
        model_name=model_name,
        eval_results=eval_results or None,
    )
    card = ModelCard.from_template(
        card_data,
        template_path=str(template_path or TASK_TEMPLATE_PATH),
        model_name=model_name,
        task_name=task_results["task_name"],
        fine_tuned_for=fine_tuned_for or task_results["task_name"],
        base_model_text=(f"`{base_model}`" if base_model else ""),
        synthetic_data=synthetic,
        architecture_rows=_architecture_rows(config),
        dataset_name=dataset_label,
        dataset_description=dataset_description or "not given",
        num_train_text=f"{num_train_pairs:,}" if num_train_pairs is not None else "unknown",
        hyperparameter_rows=[(f"`{name}`", _format_value(value)) for name, value in (hyperparameters or {}).items()],
        task_result_rows=split_rows,
        usage_path=json.dumps(str(repo_id or model_name), ensure_ascii=False),
        **dict(task_results.get("template_vars") or {}),
    )
    output_dir.mkdir(parents=True, exist_ok=True)
    card.save(output_dir / "README.md")
    return card


def load_metrics_json(path: str | os.PathLike) -> dict[str, float]:
    """A flat {metric: number} dict from a JSON file: the top level, or the dict under its "metrics" key (the
    `results.json` of `train/pretrain.py`). Non-numeric entries are dropped."""
    with open(path, encoding="utf-8") as handle:
        data = json.load(handle)
    if not isinstance(data, dict):
        raise ValueError(f"{path}: expected a JSON object of metric name -> number, got {type(data).__name__}")
    if isinstance(data.get("metrics"), dict):
        data = data["metrics"]
    return {str(key): value for key, value in data.items() if _is_number(value)}


def render_model_card_from_files(
    output_dir: str | os.PathLike,
    metrics_json_path: str | os.PathLike,
    *,
    model_config: Mapping[str, Any] | None = None,
    dataset_name: str = "shapes",
    dataset_description: str = "",
    num_train_pairs: int | None = None,
    hyperparameters: Mapping[str, Any] | None = None,
    **kwargs,
) -> ModelCard:
    """`render_model_card` with the metrics read from a JSON file and, unless `model_config` is given, the model
    config read from `<output_dir>/config.json` (an empty config when there is none). Other keyword arguments go
    to `render_model_card`."""
    if model_config is None:
        config_path = Path(output_dir) / "config.json"
        model_config = json.loads(config_path.read_text(encoding="utf-8")) if config_path.is_file() else {}
    return render_model_card(
        output_dir,
        model_config=model_config,
        metrics=load_metrics_json(metrics_json_path),
        dataset_name=dataset_name,
        dataset_description=dataset_description,
        num_train_pairs=num_train_pairs,
        hyperparameters=hyperparameters or {},
        **kwargs,
    )


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description="Write README.md (a Hub model card) into a SISC checkpoint folder.")
    parser.add_argument("output_dir", help="the checkpoint folder (its config.json is read)")
    parser.add_argument("--metrics", required=True, help="JSON with the metrics (flat, or under a 'metrics' key)")
    parser.add_argument("--dataset-name", default="shapes")
    parser.add_argument("--dataset-description", default="")
    parser.add_argument("--num-train-pairs", type=int, default=None)
    parser.add_argument("--hyperparameters", default=None, help="JSON file with a dict of hyper-parameters")
    parser.add_argument("--model-name", default=None)
    parser.add_argument("--base-model", default=None)
    parser.add_argument("--teacher", default=None)
    parser.add_argument("--eval-split", default="test")
    parser.add_argument("--repo-id", default=None, help="path shown in the usage snippet (default: the model name)")
    args = parser.parse_args(argv)
    hyperparameters = {}
    if args.hyperparameters:
        with open(args.hyperparameters, encoding="utf-8") as handle:
            hyperparameters = json.load(handle)
    render_model_card_from_files(
        args.output_dir,
        args.metrics,
        dataset_name=args.dataset_name,
        dataset_description=args.dataset_description,
        num_train_pairs=args.num_train_pairs,
        hyperparameters=hyperparameters,
        model_name=args.model_name,
        base_model=args.base_model,
        teacher=args.teacher,
        eval_split=args.eval_split,
        repo_id=args.repo_id,
    )
    print(f"wrote {Path(args.output_dir) / 'README.md'}")


if __name__ == "__main__":
    main()
