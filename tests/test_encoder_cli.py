"""Every trainer starts from pretrained encoders from the command line (tiny random-weight folders): pretraining
saves a checkpoint whose processor carries the text model's tokenizer and the vision model's image settings and that
loads in a clean environment; VQA and NLVR build their task models from encoders; a config FILE works; conflicting
flags, a bad FILE and an unreadable vocabulary get errors or warnings that name the way out."""

import json
import logging
import subprocess
import textwrap

import pytest
from huggingface_hub import ModelCard
from PIL import Image

from processing_sisc import build_default_processor
from sisc_train.data.pairs import check_vocabulary, vocabulary_report
from sisc_train.synthetic.shapes_tasks import ShapesTaskConfig, build_task_dataset
from sisc_train.tasks import nlvr as finetune_nlvr
from sisc_train.tasks import pretraining as pretrain
from sisc_train.tasks import retrieval as finetune_retrieval
from sisc_train.tasks import vqa as finetune_vqa
from tests.helpers.fresh_process import python_without_repo
from tests.helpers.tiny_encoders import IMAGE_SIZE, VISION_MEAN, save_bert, save_vision

RUN = ["--per_device_batch_size", "4", "--num_workers", "0", "--report_to", "none", "--warmup_steps", "1",
       "--logging_steps", "1", "--max_steps", "2"]


@pytest.fixture(scope="module")
def encoders(tmp_path_factory):
    root = tmp_path_factory.mktemp("cli_encoders")
    save_bert(root / "bert")
    save_vision(root / "vit", "vit")
    return root


@pytest.fixture(scope="module")
def pairs_file(tmp_path_factory):
    folder = tmp_path_factory.mktemp("pairs")
    colours = {"red": (220, 30, 30), "green": (30, 200, 30), "blue": (30, 30, 220), "yellow": (230, 230, 30)}
    rows = []
    for i in range(16):
        name = list(colours)[i % 4]
        Image.new("RGB", (20, 20), tuple(max(0, c - 5 * i) for c in colours[name])).save(folder / f"img{i}.png")
        rows.append({"image": f"img{i}.png", "caption": f"a {name} square"})
    path = folder / "pairs.jsonl"
    path.write_text("".join(json.dumps(row) + "\n" for row in rows))
    return str(path)


def test_pretrain_from_encoders_saves_a_checkpoint_with_their_tokenizer(encoders, pairs_file, tmp_path, capsys):
    out = tmp_path / "out"
    result = pretrain.main(["--dataset", pairs_file, "--eval_split", "", "--output_dir", str(out), *RUN,
                            "--text_model_name_or_path", str(encoders / "bert"),
                            "--vision_model_name_or_path", str(encoders / "vit")])
    assert result["global_step"] == 2
    printed = capsys.readouterr().out
    results = json.loads((out / "results.json").read_text())
    counts = results["parameters"]
    assert f"SiscForPreTraining: {counts['total']:,} parameters" in printed
    assert counts["total"] == counts["trainable"] == counts["without_momentum_copy"]
    args = results["args"]
    assert args["text_model_name_or_path"] == str(encoders / "bert") and args["image_size"] == IMAGE_SIZE
    assert args["vision_model_name_or_path"] == str(encoders / "vit") and args["model_config"] is None
    assert str(encoders / "bert") in ModelCard.load(out / "README.md").text
    config = json.loads((out / "config.json").read_text())
    assert config["text_config"]["num_hidden_layers"] == 2 and config["fusion_encoder_config"]["num_hidden_layers"] == 2
    assert config["text_config"]["hidden_size"] == 32 and config["embed_dim"] == 64  # the encoders' size, small's rest

    # a clean environment (no repository on the path) loads model and processor from the folder
    script = textwrap.dedent(f"""
        import torch
        from PIL import Image
        from transformers import AutoModel, AutoProcessor
        processor = AutoProcessor.from_pretrained({str(out)!r}, trust_remote_code=True)
        model = AutoModel.from_pretrained({str(out)!r}, trust_remote_code=True).eval()
        batch = processor(images=[Image.new("RGB", (30, 30))], text=["a red square"])
        with torch.no_grad():
            print(model(**batch).logits_per_image.shape)
        print(processor.tokenizer.convert_ids_to_tokens(batch["input_ids"][0].tolist()))
        print(len(processor.tokenizer), list(processor.image_processor.image_mean), processor.image_processor.size["height"])
        """)
    python, env = python_without_repo()
    env.update(HF_MODULES_CACHE=str(tmp_path / "modules"), HF_HUB_OFFLINE="1")
    workdir = tmp_path / "elsewhere"
    workdir.mkdir()
    run = subprocess.run([*python, "-c", script], cwd=workdir, env=env, capture_output=True, text=True, timeout=120)
    assert run.returncode == 0, run.stderr[-3000:]
    shape, tokens, settings = run.stdout.strip().splitlines()[-3:]
    assert shape == "torch.Size([1, 1])"
    assert tokens == "['[CLS]', 'a', 'red', 'square', '[SEP]']"
    assert settings == f"46 {VISION_MEAN} {IMAGE_SIZE}"  # the text model's 46-token vocabulary, the vision model's mean


def test_model_config_file_and_retrieval_fine_tuning_from_encoders(encoders, pairs_file, tmp_path):
    config_file = tmp_path / "sisc.json"
    config_file.write_text(json.dumps({
        "vision_config": {"model_type": "vit", "image_size": 16, "patch_size": 8, "hidden_size": 32, "num_hidden_layers": 1,
                          "num_attention_heads": 2, "intermediate_size": 64},
        "text_config": {"hidden_size": 48, "num_hidden_layers": 1, "num_attention_heads": 2, "intermediate_size": 64,
                        "max_position_embeddings": 64},
        "fusion_encoder_config": {"hidden_size": 48, "num_hidden_layers": 1, "num_attention_heads": 2,
                                  "intermediate_size": 64, "max_position_embeddings": 64},
        "embed_dim": 24}))
    out = tmp_path / "file"
    pretrain.main(["--dataset", pairs_file, "--eval_split", "", "--output_dir", str(out), *RUN,
                   "--model_config", str(config_file)])
    config = json.loads((out / "config.json").read_text())
    assert config["embed_dim"] == 24 and config["text_config"]["hidden_size"] == 48
    assert config["cls_token_id"] == 2 and config["text_config"]["vocab_size"] == 709  # the shipped vocabulary's
    # retrieval fine-tuning takes the same flags (the FILE supplies the rest, the text model its towers)
    tuned = tmp_path / "tuned"
    finetune_retrieval.main(["--dataset", pairs_file, "--validation_split", "", "--eval_split", "", "--output_dir",
                             str(tuned), *RUN, "--model_config", str(config_file),
                             "--text_model_name_or_path", str(encoders / "bert"), "--num_text_layers", "3"])
    config = json.loads((tuned / "config.json").read_text())
    assert config["text_config"]["num_hidden_layers"] == 3 and config["fusion_encoder_config"]["num_hidden_layers"] == 1
    assert config["embed_dim"] == 24 and config["vision_config"]["num_hidden_layers"] == 1


def test_vqa_and_nlvr_build_from_encoders(encoders, tmp_path):
    vqa_data, nlvr_data = tmp_path / "vqa", tmp_path / "nlvr"
    small = ShapesTaskConfig(image_size=16, num_train=8, num_validation=2, num_test=2)
    build_task_dataset("vqa", small).save_to_disk(vqa_data)
    build_task_dataset("nlvr", small).save_to_disk(nlvr_data)
    start = ["--text_model_name_or_path", str(encoders / "bert"), "--vision_model_name_or_path", str(encoders / "vit"),
             "--per_device_batch_size", "4", "--max_steps", "2", "--warmup_steps", "1", "--logging_steps", "1",
             "--report_to", "none"]
    vqa = finetune_vqa.main(["--dataset", str(vqa_data), "--output_dir", str(tmp_path / "vqa_out"), *start])
    assert vqa["global_step"] == 2 and vqa["args"]["text_model_name_or_path"] == str(encoders / "bert")
    assert vqa["parameters"]["total"] > 0
    nlvr = finetune_nlvr.main(["--dataset", str(nlvr_data), "--output_dir", str(tmp_path / "nlvr_out"),
                               "--text_assignment_examples", "0", *start])
    assert nlvr["global_step"] == 2
    config = json.loads((tmp_path / "nlvr_out" / "config.json").read_text())
    assert config["vision_config"]["hidden_size"] == 32 and config["text_config"]["vocab_size"] == 46


def test_conflicting_or_bad_flags_name_the_problem(encoders, pairs_file, tmp_path):
    base = ["--dataset", pairs_file, "--eval_split", "", "--output_dir", str(tmp_path / "never"), *RUN]
    with pytest.raises(ValueError, match="cannot go with --text_model_name_or_path"):
        pretrain.main([*base, "--model_name_or_path", str(encoders), "--text_model_name_or_path", str(encoders / "bert")])
    with pytest.raises(ValueError, match="--num_text_layers splits a pretrained text model"):
        pretrain.main([*base, "--num_text_layers", "2"])
    with pytest.raises(ValueError, match="--hidden_size sets the small model's width"):
        pretrain.main([*base, "--model_config", "base", "--hidden_size", "64"])
    with pytest.raises(ValueError, match="neither small nor base nor an existing SiscConfig JSON file"):
        pretrain.main([*base, "--model_config", str(tmp_path / "missing.json")])
    bad_file = tmp_path / "bad.json"
    bad_file.write_text(json.dumps({"text_config": {"hidden_size": 30, "num_attention_heads": 4}}))
    with pytest.raises(ValueError, match=r"bad.json: SiscConfig.text_config.num_attention_heads \(4\) must divide hidden_size"):
        pretrain.main([*base, "--model_config", str(bad_file)])
    with pytest.raises(ValueError, match=r"cannot take 4 text \+ 0 fusion layers"):
        pretrain.main([*base, "--text_model_name_or_path", str(encoders / "bert"), "--num_text_layers", "4"])
    with pytest.raises(SystemExit):
        finetune_vqa.main(["--output_dir", str(tmp_path / "never")])


def test_vocabulary_warning_names_the_tokenizer_flags(caplog):
    tokenizer = build_default_processor().tokenizer
    captions = ["grinning face with smiling eyes"] * 4
    tokens = tokenizer(captions, padding=True, return_tensors="pt")
    report = vocabulary_report(tokens["input_ids"], tokens["attention_mask"], tokenizer, captions)
    with caplog.at_level(logging.WARNING):
        check_vocabulary(report)
    assert "--tokenizer_name_or_path" in caplog.text and "--text_model_name_or_path" in caplog.text


def test_image_tower_flags_build_the_hybrid_max_model_and_are_refused_with_a_checkpoint(pairs_file, tmp_path):
    base = ["--dataset", pairs_file, "--eval_split", "", *RUN, "--image_size", "16", "--hidden_size", "32"]
    pretrain.main([*base, "--output_dir", str(tmp_path / "hybrid"), "--vision_conv_stem", "8", "16", "16",
                   "--image_pooling", "max"])
    config = json.load(open(tmp_path / "hybrid" / "config.json"))
    assert config["vision_conv_stem"] == [8, 16, 16] and config["image_pooling"] == "max"
    assert json.load(open(tmp_path / "hybrid" / "results.json"))["args"]["image_tower"] == "conv stem [8, 16, 16], max read-out"
    with pytest.raises(ValueError, match="cannot go with --image_pooling"):
        pretrain.main([*base, "--output_dir", str(tmp_path / "never"), "--model_name_or_path", str(tmp_path / "hybrid"),
                       "--image_pooling", "cls"])
    with pytest.raises(ValueError, match="patch_size must be 4, got 8"):
        pretrain.main([*base, "--output_dir", str(tmp_path / "never"), "--vision_conv_stem", "8", "16"])


def test_the_small_model_defaults_to_the_hybrid_tower_and_0_gives_the_plain_vit(encoders, pairs_file, tmp_path):
    from configuration_sisc import SMALL_IMAGE_TOWER

    base = ["--dataset", pairs_file, "--eval_split", "", *RUN, "--image_size", "16", "--hidden_size", "32"]
    pretrain.main([*base, "--output_dir", str(tmp_path / "default")])
    config = json.load(open(tmp_path / "default" / "config.json"))
    assert {name: config[name] for name in SMALL_IMAGE_TOWER} == SMALL_IMAGE_TOWER
    pretrain.main([*base, "--output_dir", str(tmp_path / "plain"), "--vision_conv_stem", "0", "--image_pooling", "cls",
                   "--itm_random_negatives", "0", "--word_prediction_loss_weight", "0", "--checkpointing_steps", "1"])
    config = json.load(open(tmp_path / "plain" / "config.json"))
    assert config["vision_conv_stem"] is None and config["image_pooling"] == "cls" and config["itm_random_negatives"] == 0
    assert config["word_prediction_loss_weight"] == 0
    # a resume must build the tower (and word head) its checkpoint has: the plain run's checkpoint is refused with
    # the defaults
    with pytest.raises(ValueError) as refused:
        pretrain.main([*base, "--output_dir", str(tmp_path / "plain"), "--resume_from_checkpoint", "latest"])
    assert "image_tower" in str(refused.value) and "word_prediction_loss_weight" in str(refused.value)
    # a pretrained image tower keeps its own patch projection and [CLS]
    pretrain.main([*base, "--output_dir", str(tmp_path / "vit"), "--vision_model_name_or_path", str(encoders / "vit")])
    config = json.load(open(tmp_path / "vit" / "config.json"))
    assert config["vision_conv_stem"] is None and config["image_pooling"] == "cls"
    assert config["word_prediction_loss_weight"] == 0


def test_text_dropout_sets_the_text_and_fusion_encoders_of_a_new_model_only(encoders, pairs_file, tmp_path):
    base = ["--dataset", pairs_file, "--eval_split", "", *RUN, "--image_size", "16", "--hidden_size", "32"]
    pretrain.main([*base, "--output_dir", str(tmp_path / "small"), "--text_dropout", "0"])
    pretrain.main([*base, "--output_dir", str(tmp_path / "bert"), "--text_dropout", "0.2",
                   "--text_model_name_or_path", str(encoders / "bert")])
    for name, dropout in (("small", 0.0), ("bert", 0.2)):
        config = json.load(open(tmp_path / name / "config.json"))
        for tower in ("text_config", "fusion_encoder_config"):
            assert config[tower]["hidden_dropout_prob"] == config[tower]["attention_probs_dropout_prob"] == dropout
        assert config["vision_config"]["hidden_dropout_prob"] == 0.0  # the image tower keeps its own
        assert json.load(open(tmp_path / name / "results.json"))["args"]["text_dropout"] == dropout
    with pytest.raises(ValueError, match="cannot go with --text_dropout"):
        pretrain.main([*base, "--output_dir", str(tmp_path / "never"), "--model_name_or_path", str(tmp_path / "small"),
                       "--text_dropout", "0"])
    with pytest.raises(ValueError, match=r"text_dropout must lie in \[0, 1\), got 1.5"):
        pretrain.main([*base, "--output_dir", str(tmp_path / "never"), "--text_dropout", "1.5"])
