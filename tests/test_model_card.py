"""Model cards: Hub metadata (model-index), rendered regulation settings, a usage snippet that compiles and runs."""

import json
import math
import os
import re
import subprocess
import sys
import textwrap

import pytest
from huggingface_hub import ModelCard

from configuration_sisc import SiscConfig
from sisc_train.publishing.model_card import load_metrics_json, main, render_model_card, render_model_card_from_files

METRICS = {
    "tr_r1": 41.5,
    "tr_r5": 77.25,
    "tr_r10": 90.0,
    "ir_r1": 30.125,
    "ir_r5": 65.0,
    "ir_r10": 80.5,
    "r_mean": 64.0625,
    "tr_map_r": 22.5,
    "ir_map_r": float("nan"),  # no query could be scored: stays out of the model-index
    "tr_no_caption": 0,
    "ir_no_relevant": 3,
}
HYPERPARAMETERS = {"learning_rate": 1e-4, "per_device_batch_size": 32, "mixed_precision": None, "seed": 7}


def small_config(**overrides) -> dict:
    settings = dict(
        weight_norm="softmax", delta=0.5, removal_threshold=0.25, alpha_start=0.9, alpha_end=0.1, alpha_steps=1234,
        alpha_schedule="cosine",
    )
    settings.update(overrides)
    return SiscConfig.small(vocab_size=120, **settings).to_dict()


def usage_snippet(text: str) -> str:
    blocks = re.findall(r"```python\n(.*?)```", text, flags=re.DOTALL)
    assert len(blocks) == 1, blocks
    return blocks[0]


@pytest.fixture
def card_dir(tmp_path):
    metrics_path = tmp_path / "results.json"
    # the layout of train/pretrain.py's results.json: metrics nested under "metrics", with other entries beside
    metrics_path.write_text(json.dumps({"metrics": METRICS, "global_step": 12, "history": []}))
    out = tmp_path / "sisc-test"
    card = render_model_card_from_files(
        out,
        metrics_path,
        model_config=small_config(),
        dataset_name="shapes",
        dataset_description="embedded shapes dataset, preset 'default'",
        num_train_pairs=4096,
        hyperparameters=HYPERPARAMETERS,
        teacher="outputs/teacher",
        eval_split="test",
    )
    assert isinstance(card, ModelCard)
    return out


def test_metadata_round_trip(card_dir):
    card = ModelCard.load(card_dir / "README.md")
    data = card.data
    assert data.pipeline_tag == "zero-shot-image-classification"
    assert data.library_name == "transformers" and data.license == "apache-2.0"
    assert data.tags == ["sisc", "vision-language", "contrastive-learning", "image-text-retrieval"]
    assert data.datasets == ["shapes"]
    assert data.model_name == "sisc-test"
    values = {result.metric_type: result.metric_value for result in data.eval_results}
    expected = {k: v for k, v in METRICS.items() if not k.endswith(("no_caption", "no_relevant")) and math.isfinite(v)}
    assert values == pytest.approx(expected)
    for result in data.eval_results:
        assert result.task_type == "image-text-retrieval"
        assert result.dataset_name == "shapes" and result.dataset_type == "shapes" and result.dataset_split == "test"
        assert result.metric_name  # readable name, e.g. "TR@1 (image → text)"
    names = {result.metric_type: result.metric_name for result in data.eval_results}
    assert names["tr_r1"].startswith("TR@1") and names["ir_r10"].startswith("IR@10") and "mAP@R" in names["tr_map_r"]
    # the raw YAML has the model-index the Hub reads
    raw = (card_dir / "README.md").read_text()
    assert raw.startswith("---\n") and "model-index:" in raw and "- name: sisc-test" in raw


def test_text_has_settings_data_results_and_citation(card_dir):
    text = ModelCard.load(card_dir / "README.md").text
    # regulation settings
    for fragment in (
        "`contrastive_loss`) | srcl",
        "`weight_norm`) | softmax",
        "`delta`) | 0.5",
        "`removal_threshold`) | 0.25",
        "`alpha_start`) | 0.9",
        "`alpha_end`) | 0.1",
        "`alpha_steps`) | 1234",
        "`alpha_schedule`) | cosine",
        "0.9 → 0.1 over 1234 steps, cosine",
        "`outputs/teacher`",
    ):
        assert fragment in text, fragment
    # architecture, data, hyper-parameters, results
    assert "ViT, 4 layers, hidden size 128, 64 px input, 8x8 patches" in text
    assert "64-d, L2-normalised" in text
    assert "**Training image-text pairs:** 4,096" in text and "preset 'default'" in text
    assert "| `learning_rate` | 0.0001 |" in text and "| `mixed_precision` | none |" in text
    assert "| `tr_r1` | 41.50 |" in text and "| `r_mean` | 64.06 |" in text and "| `tr_map_r` | 22.50 |" in text
    assert "`ir_map_r` | n/a" in text and "`ir_no_relevant` = 3" in text
    assert "**test** split" in text
    # limitations, synthetic-data warning, citation
    assert "Test model." in text and "not for real-world use" in text and "depends on the teacher" in text
    assert "Vision Language Pre-training by Contrastive Learning with Cross-Modal Similarity Regulation" in text
    assert "2305.04474" in text and "@inproceedings" in text


def test_usage_snippet_is_valid_python(card_dir):
    snippet = usage_snippet(ModelCard.load(card_dir / "README.md").text)
    compile(snippet, "usage_snippet", "exec")
    assert "from transformers import AutoModel, AutoProcessor" in snippet
    assert "AutoModel.from_pretrained(path, trust_remote_code=True)" in snippet
    assert "AutoProcessor.from_pretrained(path, trust_remote_code=True)" in snippet
    assert 'processor(text=texts, images=images, return_tensors="pt")' in snippet
    assert "logits_per_image.softmax(-1)" in snippet
    assert 'path = "sisc-test"' in snippet


def test_usage_snippet_runs_on_a_real_checkpoint(tmp_path):
    """Save a random small model + processor, render its card, and run the card's snippet in a fresh process."""
    import torch
    from PIL import Image, ImageDraw

    from modeling_sisc import SiscModel
    from processing_sisc import build_default_processor

    checkpoint = tmp_path / "checkpoint with 'quotes'"
    processor = build_default_processor(image_size=64)
    torch.manual_seed(0)
    model = SiscModel(SiscConfig.small(vocab_size=len(processor.tokenizer)))
    model.save_pretrained(checkpoint)
    processor.save_pretrained(checkpoint)
    render_model_card(
        checkpoint,
        model_config=model.config.to_dict(),
        metrics={"tr_r1": 10.0},
        dataset_name="shapes",
        dataset_description="test",
        num_train_pairs=None,
        hyperparameters={},
        repo_id=str(checkpoint),
    )
    snippet = usage_snippet((checkpoint / "README.md").read_text())

    workdir = tmp_path / "work"
    workdir.mkdir()
    for name, colour in (("image1.png", "red"), ("image2.png", "green")):
        image = Image.new("RGB", (64, 64), "white")
        ImageDraw.Draw(image).ellipse((16, 16, 48, 48), fill=colour)
        image.save(workdir / name)
    script = snippet + textwrap.dedent(
        """
        assert probs.shape == (2, len(texts)), probs.shape
        assert torch.allclose(probs.sum(-1), torch.ones(2), atol=1e-5)
        """
    )
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    env.update(HF_MODULES_CACHE=str(tmp_path / "modules"), HF_HUB_OFFLINE="1")
    done = subprocess.run([sys.executable, "-c", script], check=False, cwd=workdir, env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    assert "image1.png" in done.stdout and "image2.png" in done.stdout


def test_infonce_model_without_teacher_and_tolerated_missing_keys(tmp_path):
    card = render_model_card(
        tmp_path / "baseline",
        model_config=small_config(contrastive_loss="infonce", removal_threshold=None, alpha_schedule="constant"),
        metrics={"tr_r1": 1.0},
        dataset_name="org/some-pairs",
        dataset_description="web pairs",
        num_train_pairs=None,
        hyperparameters={},
    )
    text = card.text
    assert "plain InfoNCE" in text and "were not used" in text
    assert "none: the regulated weights are used as they are" in text
    assert "constant at 0.9" in text
    assert "Teacher | none" in text
    assert "Test model." not in text and "a photo of a cat" in text
    assert "unknown (streamed or not counted)" in text and "Not recorded." in text
    assert card.data.datasets == ["org/some-pairs"]

    # an empty config, no metrics: still a valid card, the settings shown as not recorded
    bare = render_model_card(
        tmp_path / "bare",
        model_config={},
        metrics={},
        dataset_name="data/local folder",
        dataset_description="",
        num_train_pairs=10,
        hyperparameters={},
    )
    loaded = ModelCard.load(tmp_path / "bare" / "README.md")
    assert loaded.data.eval_results is None and loaded.data.pipeline_tag == "zero-shot-image-classification"
    assert "No evaluation results were recorded." in bare.text
    assert "| Image encoder | not recorded |" in bare.text and "`delta`) | not recorded" in bare.text
    compile(usage_snippet(bare.text), "usage_snippet", "exec")


def test_peer_objective_is_named_with_its_knobs(tmp_path):
    card = render_model_card(
        tmp_path / "peer",
        model_config=small_config(contrastive_loss="hard_negatives", hard_negative_beta=0.5, debiased_prior=0.0),
        metrics={},
        dataset_name=None,
        dataset_description="pairs",
        num_train_pairs=10,
        hyperparameters={},
    )
    assert "hard-negative weighting, Robinson et al. 2021" in card.text
    assert "`hard_negative_beta` = 0.5" in card.text and "were not used" in card.text


@pytest.mark.parametrize("stem, pooling", [([32, 64, 128], "max"), (None, "cls")])
def test_image_tower_stem_and_pooling_are_described(tmp_path, stem, pooling):
    card = render_model_card(
        tmp_path / "tower", model_config=small_config(vision_conv_stem=stem, image_pooling=pooling), metrics={},
        dataset_name=None, dataset_description="pairs", num_train_pairs=10, hyperparameters={},
    )
    assert ("convolutional stem (32-64-128 channels)" in card.text) == bool(stem)
    assert ("maximum over the patch states" in card.text) == (pooling == "max")


def test_text_and_fusion_dropout_are_described(tmp_path):
    config = small_config()
    for name in ("text_config", "fusion_encoder_config"):
        config[name]["hidden_dropout_prob"] = 0.0
    card = render_model_card(tmp_path / "card", model_config=config, metrics={}, dataset_name=None,
                             dataset_description="pairs", num_train_pairs=10, hyperparameters={})
    text_row = next(line for line in card.text.splitlines() if line.startswith("| Text encoder |"))
    fusion_row = next(line for line in card.text.splitlines() if line.startswith("| Fusion encoder |"))
    assert "dropout 0.0" in text_row and "dropout 0.0" in fusion_row


def test_base_model_goes_to_metadata_only_when_it_is_a_hub_id(tmp_path):
    local = tmp_path / "init"
    local.mkdir()
    common = dict(
        model_config=small_config(), metrics={"ir_r1": 5.0}, dataset_name="shapes", dataset_description="",
        num_train_pairs=1, hyperparameters={},
    )
    card = render_model_card(tmp_path / "a", base_model="org/sisc-base", model_name="my-sisc", **common)
    assert card.data.base_model == "org/sisc-base" and card.data.model_name == "my-sisc"
    assert "starting from `org/sisc-base`" in card.text and "# my-sisc" in card.text
    card = render_model_card(tmp_path / "b", base_model=str(local), **common)
    assert card.data.base_model is None and str(local) in card.text


def test_metrics_json_flat_and_nested(tmp_path):
    flat = tmp_path / "flat.json"
    flat.write_text(json.dumps({"tr_r1": 12.5, "ir_r1": 7, "note": "text is dropped"}))
    assert load_metrics_json(flat) == {"tr_r1": 12.5, "ir_r1": 7}
    nested = tmp_path / "nested.json"
    nested.write_text(json.dumps({"metrics": {"r_mean": 3.0}, "train_seconds": 5.0}))
    assert load_metrics_json(nested) == {"r_mean": 3.0}
    bad = tmp_path / "bad.json"
    bad.write_text("[1, 2]")
    with pytest.raises(ValueError, match="JSON object"):
        load_metrics_json(bad)


def test_command_line_reads_config_json_from_the_checkpoint(tmp_path):
    out = tmp_path / "ckpt"
    out.mkdir()
    (out / "config.json").write_text(json.dumps(small_config(delta=0.75)))
    metrics = tmp_path / "m.json"
    metrics.write_text(json.dumps({"tr_r1": 50.0, "ir_r1": 25.0}))
    main([str(out), "--metrics", str(metrics), "--num-train-pairs", "64", "--model-name", "cli-card"])
    card = ModelCard.load(out / "README.md")
    assert {r.metric_type: r.metric_value for r in card.data.eval_results} == {"tr_r1": 50.0, "ir_r1": 25.0}
    assert "`delta`) | 0.75" in card.text and "# cli-card" in card.text


@pytest.mark.parametrize("share, end, expected", [
    (0.0, None, "(ITM, with hard negatives sampled"),
    (0.5, None, "(ITM, with 50% of its negatives drawn at random, the others hard negatives"),
    (1.0, 0.0, "moving from 100% to 0% over training"),
])
def test_itm_negatives_are_described(tmp_path, share, end, expected):
    card = render_model_card(
        tmp_path / "itm", model_config=small_config(itm_random_negatives=share, itm_random_negatives_end=end),
        metrics={}, dataset_name=None, dataset_description="pairs", num_train_pairs=10, hyperparameters={},
    )
    assert expected in card.text


def test_auxiliary_losses_are_named_only_when_on(tmp_path):
    def objective(**overrides):
        return render_model_card(
            tmp_path / "aux", model_config=small_config(**overrides), metrics={}, dataset_name=None,
            dataset_description="pairs", num_train_pairs=10, hyperparameters={},
        ).text

    plain = objective(word_prediction_loss_weight=0.0)  # the small model's default has word prediction on
    assert "as in ALBEF" in plain and "word prediction" not in plain and "negative-caption" not in plain
    both = objective(word_prediction_loss_weight=2.0, negative_caption_loss_weight=0.5)
    assert "word prediction (the caption's words predicted from the image), weight 2" in both
    assert "negative-caption loss (each image against its caption with one word swapped), weight 0.5" in both
    assert "as in ALBEF" not in both
