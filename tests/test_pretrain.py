"""Pretraining end to end on tiny data: both losses, teacher + alpha schedule, teacher cache, resume, bad data."""

import json
import os
import subprocess
from pathlib import Path

import pytest
import torch
from PIL import Image

from sisc_train.loop.checkpoints import find_checkpoint
from sisc_train.loop.arguments import parse_args
from sisc_train.tasks import pretraining as pretrain

TINY = ["--image_size", "16", "--hidden_size", "32", "--per_device_batch_size", "8", "--num_workers", "0",
        "--report_to", "none", "--eval_split", "", "--warmup_steps", "2", "--logging_steps", "1"]


@pytest.fixture(scope="module")
def pairs_file(tmp_path_factory):
    """40 coloured squares with two captions each (a JSON-lines file of image paths and caption lists)."""
    folder = tmp_path_factory.mktemp("pairs")
    colours = {"red": (220, 30, 30), "green": (30, 200, 30), "blue": (30, 30, 220), "yellow": (230, 230, 30)}
    rows = []
    for i in range(40):
        name = list(colours)[i % 4]
        shade = tuple(max(0, c - 3 * i) for c in colours[name])
        Image.new("RGB", (20, 20), shade).save(folder / f"img{i}.png")
        rows.append({"image": f"img{i}.png", "caption": [f"a {name} square", f"something {name}"]})
    path = folder / "pairs.jsonl"
    path.write_text("".join(json.dumps(row) + "\n" for row in rows))
    return str(path)


@pytest.fixture(scope="module")
def bad_pairs_file(pairs_file, tmp_path_factory):
    """The same pairs plus a corrupt image, a missing image and an empty caption."""
    folder = os.path.dirname(pairs_file)
    with open(os.path.join(folder, "bad.png"), "wb") as f:
        f.write(b"not a png")
    lines = open(pairs_file).read()
    extra = [{"image": "bad.png", "caption": "broken"}, {"image": "missing.png", "caption": "gone"},
             {"image": "img0.png", "caption": "   "}]
    path = os.path.join(folder, "bad_pairs.jsonl")
    with open(path, "w") as f:
        f.write(lines + "".join(json.dumps(row) + "\n" for row in extra))
    return path


def train(data, out, *extra):
    return pretrain.main(["--dataset", data, "--output_dir", str(out), *TINY, *extra])


def final_state(folder):
    from safetensors.torch import load_file

    return load_file(os.path.join(folder, "model.safetensors"))


@pytest.mark.parametrize("loss", ["infonce", "srcl"])
def test_pretrain_saves_a_loadable_checkpoint(pairs_file, tmp_path, loss):
    from transformers import AutoModel, AutoProcessor

    result = train(pairs_file, tmp_path, "--loss", loss, "--max_steps", "3")
    assert result["global_step"] == 3
    summary = json.load(open(tmp_path / "results.json"))
    assert summary["global_step"] == 3 and summary["last_logs"]["loss"] > 0
    model = AutoModel.from_pretrained(tmp_path, trust_remote_code=True)
    processor = AutoProcessor.from_pretrained(tmp_path, trust_remote_code=True)
    assert model.config.contrastive_loss == loss
    inputs = processor(text=["a red square", "a blue square"], images=[Image.new("RGB", (20, 20), (200, 0, 0))])
    with torch.no_grad():
        assert model(**inputs).logits_per_image.shape == (1, 2)
    if loss == "srcl":
        assert "weights/mean" in summary["last_logs"] and summary["last_logs"]["weights/mean"] == pytest.approx(1.0, abs=1e-4)
        assert any(name.endswith(".png") for name in os.listdir(tmp_path / "diagnostics"))


def test_config_file_with_flag_override(pairs_file, tmp_path):
    config = tmp_path / "run.yaml"
    config.write_text("loss: infonce\nmax_steps: 2\nlearning_rate: 0.0005\n")
    model_args, data_args, args, _ = parse_args(pretrain.ARGUMENTS, ["--config", str(config), "--max_steps", "1"])
    assert model_args.loss == "infonce" and args.learning_rate == 0.0005 and args.max_steps == 1
    config.write_text("not_a_field: 1\n")
    with pytest.raises(ValueError, match="not_a_field"):
        parse_args(pretrain.ARGUMENTS, ["--config", str(config)])


def test_resume_gives_the_same_weights(pairs_file, tmp_path):
    # K = 6 steps in one go (with a checkpoint at step 3), then a second run resumed from that checkpoint.
    one_go = tmp_path / "one_go"
    train(pairs_file, one_go, "--max_steps", "6", "--checkpointing_steps", "3")
    checkpoint = one_go / "checkpoints" / "step_3"
    assert checkpoint.is_dir()
    resumed = tmp_path / "resumed"
    result = train(pairs_file, resumed, "--max_steps", "6", "--resume_from_checkpoint", str(checkpoint))
    assert result["global_step"] == 6
    a, b = final_state(one_go), final_state(resumed)
    assert a.keys() == b.keys()
    for name in a:
        torch.testing.assert_close(b[name], a[name], rtol=1e-5, atol=1e-6, msg=name)
    # 'latest' finds the newest checkpoint of the output folder
    assert find_checkpoint(str(one_go), "latest").endswith("step_6")


def test_bad_samples_are_skipped_counted_and_bounded(bad_pairs_file, tmp_path):
    # one epoch of 83 rows in 10 batches of 8 (drop_last): every bad row that lands in a batch is skipped
    train(bad_pairs_file, tmp_path / "ok", "--num_epochs", "1", "--max_bad_fraction", "0.2")
    summary = json.load(open(tmp_path / "ok" / "results.json"))
    assert summary["seen_samples"] == 80
    assert 0 <= summary["skipped_samples"] <= 3
    with pytest.raises(RuntimeError, match="max_bad_fraction"):
        train(bad_pairs_file, tmp_path / "strict", "--num_epochs", "2", "--max_bad_fraction", "0.0")


def test_collator_skips_and_refills(bad_pairs_file):
    from processing_sisc import build_default_processor
    from sisc_train.data.pairs import PairCollator, load_pairs, pop_bookkeeping

    rows = load_pairs(bad_pairs_file)
    bad = [rows[i] for i in range(len(rows) - 3, len(rows))]
    good = [rows[0], rows[1]]
    batch = PairCollator(build_default_processor(image_size=16))(good + bad)
    seen, skipped, reasons, _ = pop_bookkeeping(batch)
    assert (seen, skipped) == (5, 3)
    assert reasons["empty caption"] == 1 and sum(reasons.values()) == 3
    # the batch keeps its size; refilled slots repeat kept rows with their image id (both kept rows show img0.png)
    assert batch["pixel_values"].shape[0] == 5 and batch["image_ids"].tolist() == [rows[0]["image_id"]] * 5


def test_skips_name_their_files_and_empty_caption_lists_count(bad_pairs_file, tmp_path):
    import datasets

    from processing_sisc import build_default_processor
    from sisc_train.data.pairs import PairCollator, SkipCounter, load_pairs, pop_bookkeeping

    collate = PairCollator(build_default_processor(image_size=16))
    folder = os.path.dirname(bad_pairs_file)
    rows = load_pairs(bad_pairs_file)
    seen, skipped, reasons, _ = pop_bookkeeping(collate([rows[0], *[rows[i] for i in range(len(rows) - 3, len(rows))]]))
    # counted by kind, so that counts add up; a few examples per kind name the file
    assert dict(reasons) == {"bad image (UnidentifiedImageError)": 1, "bad image (FileNotFoundError)": 1, "empty caption": 1}
    assert reasons.examples["bad image (FileNotFoundError)"] == [os.path.join(folder, "missing.png") + " (no such file)"]
    assert os.path.join(folder, "bad.png") in reasons.examples["bad image (UnidentifiedImageError)"][0]
    counter = SkipCounter(max_bad_fraction=0.0)
    counter.update(seen, skipped, reasons)
    counter.update(seen, skipped, reasons)
    assert counter.reasons["empty caption"] == 2 and len(counter.reasons.examples["empty caption"]) == 1
    with pytest.raises(RuntimeError, match=r"bad image \(FileNotFoundError\): 2 \(e\.g\. .*missing\.png \(no such file\)\).*--image_root"):
        counter.check()

    # a CSV elsewhere whose paths are relative to the images' folder: the batch error names a path and --image_root
    table = datasets.Dataset.from_dict({"image": ["img0.png", "img1.png"], "caption": ["a red square", "a green one"]})
    table.to_csv(tmp_path / "pairs.csv", index=False)
    missing = str(tmp_path / "img0.png")
    with pytest.raises(RuntimeError, match=rf"every sample of a batch of 2 .*{missing} \(no such file\).*--image_root"):
        collate(list(load_pairs(str(tmp_path / "pairs.csv"))))
    assert collate(list(load_pairs(str(tmp_path / "pairs.csv"), image_root=folder)))["num_skipped"] == 0

    # an image with an empty caption list is a counted skip, not a row that silently disappears
    (tmp_path / "empty.jsonl").write_text(json.dumps({"image": os.path.join(folder, "img0.png"), "caption": []}) + "\n"
                                          + json.dumps({"image": os.path.join(folder, "img1.png"), "caption": ["one"]}) + "\n")
    rows = load_pairs(str(tmp_path / "empty.jsonl"))
    assert rows["caption"] == ["", "one"]
    _, skipped, reasons, _ = pop_bookkeeping(collate(list(rows)))
    assert skipped == 1 and dict(reasons) == {"empty caption": 1}


def test_captions_the_vocabulary_cannot_read_stop_training(pairs_file, tmp_path, caplog):
    import logging

    import datasets

    from processing_sisc import build_default_processor
    from sisc_train.data.pairs import check_caption_vocabulary

    tokenizer = build_default_processor(image_size=16).tokenizer

    def rows(captions):
        return datasets.Dataset.from_dict({"image": ["x.png"] * len(captions), "caption": captions})

    # Russian captions: every word is [UNK] with the shipped vocabulary; training stops, giving the numbers
    russian = ["красный круг", "синий квадрат над зелёной звездой", "   ", "три маленьких шестиугольника"]
    with pytest.raises(ValueError, match=r"100\.0% of 10 caption tokens \(3 captions\) are \[UNK\].*'синий квадрат "
                                         r"над зелёной звездой' -> \[CLS\]( \[UNK\]){5} \[SEP\].*covers these captions"):
        check_caption_vocabulary(rows(russian), tokenizer)
    # English the vocabulary spells out letter by letter: a warning, training goes on
    with caplog.at_level(logging.WARNING, logger="sisc_train.data.pairs"):
        report = check_caption_vocabulary(rows(["a grinning face", "a red circle", "a blue square and a star"]), tokenizer)
    assert report["unk_share"] == 0 and 0.3 < report["fragment_share"] < 0.6  # g ##r ##i ##n ##n ##ing
    assert "single-letter word pieces" in caplog.text and "g ##r ##i ##n ##n ##ing" in caplog.text
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="sisc_train.data.pairs"):
        report = check_caption_vocabulary(rows(["a red circle", "two blue squares, left"]), tokenizer)
    assert report["unk_share"] == report["fragment_share"] == 0 and not caplog.text
    # the trainer checks before its first step
    folder = os.path.dirname(pairs_file)
    data = tmp_path / "russian.jsonl"
    data.write_text("".join(json.dumps({"image": os.path.join(folder, f"img{i}.png"), "caption": russian[i % 4]}) + "\n"
                            for i in range(16)))
    with pytest.raises(ValueError, match=r"are \[UNK\]"):
        train(str(data), tmp_path / "out", "--max_steps", "1")
    assert not (tmp_path / "out" / "model.safetensors").exists()


@pytest.fixture(scope="module")
def teacher_dir(pairs_file, tmp_path_factory):
    """A tiny teacher trained with plain InfoNCE (as the paper's teacher is)."""
    out = tmp_path_factory.mktemp("teacher")
    train(pairs_file, out, "--loss", "infonce", "--max_steps", "2")
    return out


def test_alpha_schedule():
    from configuration_sisc import SiscConfig

    config = SiscConfig.small(vocab_size=50, alpha_start=1.0, alpha_end=0.0, alpha_steps=10)
    assert [config.alpha_at(s) for s in (0, 5, 10, 20)] == [1.0, 0.5, 0.0, 0.0]
    config.alpha_schedule = "cosine"
    assert config.alpha_at(5) == pytest.approx(0.5) and config.alpha_at(2) > 0.8
    config.alpha_schedule = "constant"
    assert config.alpha_at(7) == 1.0


def test_student_with_teacher_logs_alpha(pairs_file, teacher_dir, tmp_path):
    train(pairs_file, tmp_path, "--teacher", str(teacher_dir), "--max_steps", "4", "--alpha_steps", "4")
    history = json.load(open(tmp_path / "results.json"))["last_logs"]
    # alpha is logged after each step: step 4 of a 4-step linear schedule from 1 to 0 logs alpha_at(3) = 0.25
    assert history["alpha"] == pytest.approx(0.25)


def test_teacher_cache_gives_the_online_teacher_weights(pairs_file, teacher_dir, tmp_path):
    from modeling_sisc import SiscModel, mixed_similarity, regulation_weights
    from processing_sisc import build_default_processor
    from sisc_train.data.teacher_cache import attach_teacher_cache, build_teacher_cache, load_teacher_cache
    from sisc_train.data.pairs import PairCollator, load_pairs

    teacher = SiscModel.from_pretrained(teacher_dir).eval()
    processor = build_default_processor(image_size=16)
    rows = load_pairs(pairs_file)
    build_teacher_cache(teacher, processor, rows, str(tmp_path / "cache"), batch_size=16)
    cached = attach_teacher_cache(rows, load_teacher_cache(str(tmp_path / "cache"), rows, teacher))

    picked = [cached[i] for i in (0, 5, 17, 33, 50, 64, 70, 79)]
    batch = PairCollator(processor, passthrough=("teacher_image_embeds", "teacher_text_embeds"))(picked)
    with torch.no_grad():
        online_image = teacher.get_image_features(batch["pixel_values"])
        online_text = teacher.get_text_features(batch["input_ids"], batch["attention_mask"])
    torch.testing.assert_close(batch["teacher_image_embeds"], online_image, rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(batch["teacher_text_embeds"], online_text, rtol=1e-4, atol=1e-5)
    student_cos = torch.randn(8, 8).clamp(-1, 1)
    w_online = regulation_weights(mixed_similarity(student_cos, online_text @ online_image.t(), 0.7))
    w_cached = regulation_weights(
        mixed_similarity(student_cos, batch["teacher_text_embeds"] @ batch["teacher_image_embeds"].t(), 0.7)
    )
    torch.testing.assert_close(w_cached, w_online, rtol=1e-4, atol=1e-5)

    # a cache is refused for other data and for another teacher
    with pytest.raises(ValueError, match="other training data"):
        load_teacher_cache(str(tmp_path / "cache"), rows.select(range(10)), teacher)
    other_teacher = SiscModel(teacher.config)
    with pytest.raises(ValueError, match="another teacher"):
        load_teacher_cache(str(tmp_path / "cache"), rows, other_teacher)


def test_pretrain_with_teacher_cache(pairs_file, teacher_dir, tmp_path):
    from sisc_train.tasks import teacher_cache as cache_teacher

    cache_dir = cache_teacher.main(["--teacher", str(teacher_dir), "--dataset", pairs_file, "--cache_dir", str(tmp_path / "cache")])
    result = train(pairs_file, tmp_path / "run", "--teacher_cache", cache_dir, "--max_steps", "2", "--alpha_steps", "4")
    assert result["global_step"] == 2
    assert json.load(open(tmp_path / "run" / "results.json"))["last_logs"]["alpha"] == pytest.approx(0.75)


def test_streaming_bf16_and_accumulation(pairs_file, tmp_path):
    result = train(
        pairs_file, tmp_path, "--streaming", "--max_steps", "2", "--mixed_precision", "bf16",
        "--gradient_accumulation_steps", "2",
    )
    assert result["global_step"] == 2
    summary = json.load(open(tmp_path / "results.json"))
    assert summary["seen_samples"] == 2 * 2 * 8  # 2 optimiser steps x 2 micro-batches x 8 pairs


def test_streaming_needs_max_steps(pairs_file, tmp_path):
    with pytest.raises(ValueError, match="max_steps"):
        train(pairs_file, tmp_path, "--streaming")


def test_data_formats_load_as_pairs(pairs_file, tmp_path):
    import datasets

    from sisc_train.data.pairs import load_pairs

    from_jsonl = load_pairs(pairs_file)
    assert len(from_jsonl) == 80 and set(from_jsonl.column_names) >= {"image", "caption", "image_id"}
    assert from_jsonl[0]["image_id"] == from_jsonl[1]["image_id"] != from_jsonl[2]["image_id"]

    # parquet and CSV with one caption per row; paths resolved against the file's folder
    folder = os.path.dirname(pairs_file)
    table = datasets.Dataset.from_dict({"path": ["img0.png", "img1.png"], "text": ["a red square", "a green one"]})
    table.to_parquet(os.path.join(folder, "pairs.parquet"))
    table.to_csv(os.path.join(folder, "pairs.csv"), index=False)
    for name in ("pairs.parquet", "pairs.csv"):
        rows = load_pairs(os.path.join(folder, name), image_column="path", caption_column="text")
        assert len(rows) == 2 and os.path.isabs(rows[0]["image"]) and rows[1]["caption"] == "a green one"

    # a saved Dataset with a decoded image column, and an imagefolder with captions in metadata.jsonl
    images = [Image.new("RGB", (8, 8), (i * 40, 0, 0)) for i in range(3)]
    saved = datasets.Dataset.from_dict({"image": images, "caption": [["one", "two"], ["three"], ["four"]]})
    saved = saved.cast_column("image", datasets.Image())
    saved.save_to_disk(str(tmp_path / "saved"))
    rows = load_pairs(str(tmp_path / "saved"))
    assert len(rows) == 4 and rows["image_id"] == [0, 0, 1, 2]
    # a saved dataset that has its own image ids (e.g. the shapes data saved with save_to_disk) keeps them
    saved.add_column("image_id", [7, 8, 9]).save_to_disk(str(tmp_path / "saved_with_ids"))
    rows = load_pairs(str(tmp_path / "saved_with_ids"))
    assert rows["image_id"] == [7, 7, 8, 9] and rows["caption"] == ["one", "two", "three", "four"]
    image_folder = tmp_path / "imagefolder" / "train"
    image_folder.mkdir(parents=True)
    for i, image in enumerate(images):
        image.save(image_folder / f"{i}.png")
    (image_folder / "metadata.jsonl").write_text(
        "".join(json.dumps({"file_name": f"{i}.png", "caption": f"picture {i}"}) + "\n" for i in range(3))
    )
    rows = load_pairs(str(tmp_path / "imagefolder"))
    assert len(rows) == 3 and sorted(rows["caption"]) == ["picture 0", "picture 1", "picture 2"]

    with pytest.raises(ValueError, match="no column 'caption'"):
        load_pairs(os.path.join(folder, "pairs.csv"), image_column="path", caption_column="caption")
    with pytest.raises(FileNotFoundError):
        load_pairs(str(tmp_path / "nowhere"))


def test_caption_and_image_columns_are_found_by_their_usual_names(pairs_file, tmp_path):
    import datasets

    from sisc_train.data.pairs import load_pairs

    # an imagefolder whose captions are in a `text` column (the common name) loads without --caption_column
    image_folder = tmp_path / "imagefolder"
    image_folder.mkdir()
    for i in range(3):
        Image.new("RGB", (8, 8), (i * 40, 0, 0)).save(image_folder / f"{i}.png")
    (image_folder / "metadata.jsonl").write_text(
        "".join(json.dumps({"file_name": f"{i}.png", "text": f"picture {i}"}) + "\n" for i in range(3))
    )
    rows = load_pairs(str(image_folder))
    assert sorted(rows["caption"]) == ["picture 0", "picture 1", "picture 2"]
    # a CSV of `path`, `Sentence` columns: both found (names in any case)
    folder = os.path.dirname(pairs_file)
    table = datasets.Dataset.from_dict({"id": [1, 2], "path": ["img0.png", "img1.png"], "Sentence": ["a red", "a green"]})
    table.to_csv(tmp_path / "pairs.csv", index=False)
    rows = load_pairs(str(tmp_path / "pairs.csv"), image_root=folder)
    assert rows["caption"] == ["a red", "a green"] and rows[0]["image"] == os.path.join(folder, "img0.png")
    # explicit flags win over the usual names
    table.add_column("caption", ["x", "y"]).to_csv(tmp_path / "two.csv", index=False)
    assert load_pairs(str(tmp_path / "two.csv"))["caption"] == ["x", "y"]
    assert load_pairs(str(tmp_path / "two.csv"), caption_column="Sentence")["caption"] == ["a red", "a green"]
    # no usual name: the error names the columns seen and the flag
    datasets.Dataset.from_dict({"path": ["img0.png"], "words": ["a red"]}).to_csv(tmp_path / "odd.csv", index=False)
    with pytest.raises(ValueError, match=r"no caption column found among its columns \['path', 'words'\].*--caption_column"):
        load_pairs(str(tmp_path / "odd.csv"))
    datasets.Dataset.from_dict({"picture": ["img0.png"], "text": ["a red"]}).to_csv(tmp_path / "odd2.csv", index=False)
    with pytest.raises(ValueError, match=r"no image column found .*--image_column"):
        load_pairs(str(tmp_path / "odd2.csv"))
    assert load_pairs(str(tmp_path / "odd2.csv"), image_column="picture", image_root=folder)["caption"] == ["a red"]


def test_a_split_the_data_lacks_fails_at_start_up(pairs_file, tmp_path):
    # a data file has one split: evaluating its "test" split would evaluate on the training rows
    with pytest.raises(ValueError, match=r"--eval_split 'test': .*single data file.*--eval_dataset.*--eval_split ''"):
        train(pairs_file, tmp_path / "no_eval", "--eval_split", "test", "--max_steps", "1")
    with pytest.raises(ValueError, match=r"--validation_split 'val': .*--validation_dataset"):
        train(pairs_file, tmp_path / "no_val", "--validation_split", "val", "--max_steps", "1")
    assert not (tmp_path / "no_eval" / "model.safetensors").exists()
    # a separate evaluation file is evaluated whole and named in the model card
    folder = os.path.dirname(pairs_file)
    eval_file = tmp_path / "held_out.jsonl"
    eval_file.write_text("".join(json.dumps({"image": os.path.join(folder, f"img{i}.png"), "caption": f"square {i}"}) + "\n"
                                 for i in range(4)))
    result = train(pairs_file, tmp_path / "ok", "--eval_split", "test", "--eval_dataset", str(eval_file), "--max_steps", "1")
    assert result["metrics"]["tr_r5"] == result["metrics"]["ir_r5"] == 100.0  # 4 images: not the 40 training ones
    card = (tmp_path / "ok" / "README.md").read_text()
    assert "**test** split of " + str(eval_file) in card


def test_momentum_encoder_added_to_a_checkpoint_starts_as_a_copy(tmp_path):
    """ALBEF distillation from a checkpoint trained without it: the momentum towers copy the student, not noise."""
    from configuration_sisc import SiscConfig
    from modeling_sisc import SiscForPreTraining

    torch.manual_seed(0)
    SiscForPreTraining(SiscConfig.small(vocab_size=50, image_size=16, hidden_size=32)).save_pretrained(tmp_path)
    model_args = pretrain.ModelArguments(model_name_or_path=str(tmp_path), momentum_distillation=True)
    model = pretrain.build_model(model_args, processor=None, total_steps=10)
    student = dict(model.sisc.vision_model.named_parameters())
    for name, param in model.momentum_encoder.vision_model.named_parameters():
        assert torch.equal(param, student[name]), name


def test_freeze_text_tower_keeps_the_text_weights(pairs_file, tmp_path):
    train(pairs_file, tmp_path / "start", "--max_steps", "1")
    result = train(pairs_file, tmp_path / "locked", "--model_name_or_path", str(tmp_path / "start"), "--freeze_text_tower",
                   "--max_steps", "2", "--learning_rate", "1e-2")
    assert result["global_step"] == 2
    before, after = final_state(tmp_path / "start"), final_state(tmp_path / "locked")
    text = [name for name in before if ".text_model." in f".{name}"]
    vision = [name for name in before if ".vision_model." in f".{name}"]
    assert text and all(torch.equal(before[name], after[name]) for name in text)
    assert any(not torch.equal(before[name], after[name]) for name in vision)
    summary = json.load(open(tmp_path / "locked" / "results.json"))
    assert summary["args"]["freeze_text_tower"] is True
    assert summary["parameters"]["trainable"] < summary["parameters"]["total"]


def test_itm_random_negatives_flag_reaches_the_saved_config(pairs_file, tmp_path):
    train(pairs_file, tmp_path / "mixed", "--itm_random_negatives", "0.5", "--max_steps", "1")
    assert json.load(open(tmp_path / "mixed" / "results.json"))["args"]["itm_random_negatives"] == 0.5
    assert json.load(open(tmp_path / "mixed" / "config.json"))["itm_random_negatives"] == 0.5


def test_itm_curriculum_moves_the_random_share_over_the_run_and_a_checkpoint_goes_on_at_its_end(pairs_file, tmp_path):
    train(pairs_file, tmp_path / "curriculum", "--itm_random_negatives", "1.0", "--itm_random_negatives_end", "0.2",
          "--max_steps", "4", "--logging_steps", "1")
    summary = json.load(open(tmp_path / "curriculum" / "results.json"))
    shares = [entry["itm_random_share"] for entry in summary["history"]]
    assert shares == pytest.approx([1.0, 0.8, 0.6, 0.4])  # step s (1-based) logs the share it trained with
    config = json.load(open(tmp_path / "curriculum" / "config.json"))
    assert (config["itm_random_negatives"], config["itm_random_negatives_end"], config["itm_curriculum_steps"]) == (1.0, 0.2, 4)
    # fine-tuning from it: no second curriculum, the end share from the first step
    model_args = pretrain.ModelArguments(model_name_or_path=str(tmp_path / "curriculum"))
    model = pretrain.build_model(model_args, processor=None, total_steps=10)
    assert model.config.itm_random_negatives_end is None and model.config.itm_random_negatives == pytest.approx(0.2)


def test_fused_adamw_makes_the_same_updates(pairs_file, tmp_path):
    """--fused_adamw (benchmarks/throughput.py measures it) trains to the same weights as the default AdamW, up to
    float rounding, and is recorded with the run's settings."""
    train(pairs_file, tmp_path / "default", "--max_steps", "2")
    train(pairs_file, tmp_path / "fused", "--max_steps", "2", "--fused_adamw")
    default, fused = final_state(tmp_path / "default"), final_state(tmp_path / "fused")
    for name, tensor in default.items():
        torch.testing.assert_close(fused[name], tensor, rtol=1e-4, atol=1e-6, msg=name)
    assert json.loads((tmp_path / "fused" / "results.json").read_text())["args"]["fused_adamw"] is True


def test_grouped_batches_resume_across_an_epoch_to_the_same_weights(pairs_file, tmp_path):
    # 80 rows in batches of 8: 10 steps per epoch; the resumed run starts mid-epoch 0 and goes through epoch 1, whose
    # grouped order must be the uninterrupted run's
    grouped = ["--batch_groups", "caption", "--batch_group_size", "4", "--max_steps", "14"]
    one_go = tmp_path / "one_go"
    train(pairs_file, one_go, *grouped, "--checkpointing_steps", "7")
    resumed = tmp_path / "resumed"
    train(pairs_file, resumed, *grouped, "--resume_from_checkpoint", str(one_go / "checkpoints" / "step_7"))
    a, b = final_state(one_go), final_state(resumed)
    for name in a:
        torch.testing.assert_close(b[name], a[name], rtol=1e-5, atol=1e-6, msg=name)
    with pytest.raises(ValueError, match="resume|batch_groups"):  # the grouping is a setting a resume must share
        train(pairs_file, tmp_path / "other", "--max_steps", "14",
              "--resume_from_checkpoint", str(one_go / "checkpoints" / "step_7"))
    with pytest.raises(ValueError, match="no such column"):
        train(pairs_file, tmp_path / "bad", "--batch_groups", "category", "--max_steps", "1")
    with pytest.raises(ValueError, match="drop --streaming"):  # a stream cannot be ordered: refused, not ignored
        train(pairs_file, tmp_path / "stream", "--batch_groups", "caption", "--streaming", "--max_steps", "1")


@pytest.fixture(scope="module")
def negatives_file(tmp_path_factory):
    """One caption per row and a `negative_caption` false of the image ("" for every third row: none)."""
    folder = tmp_path_factory.mktemp("negatives")
    colours = {"red": (220, 30, 30), "green": (30, 200, 30), "blue": (30, 30, 220), "yellow": (230, 230, 30)}
    rows = []
    for i in range(24):
        name, other = list(colours)[i % 4], list(colours)[(i + 1) % 4]
        Image.new("RGB", (20, 20), colours[name]).save(folder / f"img{i}.png")
        rows.append({"image": f"img{i}.png", "caption": f"a {name} square", "negative_caption": "" if i % 3 == 0 else f"a {other} square"})
    path = folder / "pairs.jsonl"
    path.write_text("".join(json.dumps(row) + "\n" for row in rows))
    return str(path)


def test_collator_tokenizes_negative_captions_and_masks_missing_ones(negatives_file):
    from processing_sisc import build_default_processor
    from sisc_train.data.pairs import PairCollator, load_pairs

    rows = load_pairs(negatives_file)
    batch = PairCollator(build_default_processor(image_size=16))([rows[i] for i in range(4)])
    assert batch["negative_input_ids"].shape[0] == 4
    assert batch["negative_attention_mask"].any(dim=1).tolist() == [False, True, True, False]


def test_negative_caption_loss_trains_from_the_data_column_and_needs_it(negatives_file, pairs_file, tmp_path):
    train(negatives_file, tmp_path / "negatives", "--negative_caption_loss_weight", "1", "--max_steps", "2")
    summary = json.load(open(tmp_path / "negatives" / "results.json"))
    assert all(entry["loss_negative_caption"] > 0 for entry in summary["history"])
    assert json.load(open(tmp_path / "negatives" / "config.json"))["negative_caption_loss_weight"] == 1.0
    with pytest.raises(ValueError, match="no 'negative_caption' column"):
        train(pairs_file, tmp_path / "none", "--negative_caption_loss_weight", "1", "--max_steps", "1")


def test_the_shapes_data_derives_negative_captions_only_when_the_loss_is_on(tmp_path):
    shapes = ["--dataset", "shapes", "--shapes_num_train", "24", "--data_cache_dir", str(tmp_path / "cache"),
              *TINY, "--eval_split", ""]
    task = pretrain.PretrainingTask(*parse_args(pretrain.ARGUMENTS, [*shapes, "--output_dir", str(tmp_path / "off")]))
    rows, _ = task.load_data()
    assert "negative_caption" not in rows.column_names  # off by default: no start-up or collation cost
    for extra in ((), ("--streaming",)):  # a stream derives them as it is read
        out = tmp_path / f"on{len(extra)}"
        pretrain.main([*shapes, "--output_dir", str(out), "--negative_caption_loss_weight", "1", "--max_steps", "2", *extra])
        history = json.load(open(out / "results.json"))["history"]
        assert all(entry["loss_negative_caption"] > 0 for entry in history)


def test_image_tower_only_trains_the_image_tower_alone_and_pretraining_goes_on_from_it(pairs_file, tmp_path):
    one, two = tmp_path / "one", tmp_path / "two"
    train(pairs_file, one, "--image_tower_only", "--word_prediction_loss_weight", "1", "--max_steps", "1")
    result = train(pairs_file, two, "--image_tower_only", "--word_prediction_loss_weight", "1", "--max_steps", "2")
    assert result["global_step"] == 2 and result["metrics"] == {}  # no retrieval: the text side is untrained
    summary = json.load(open(two / "results.json"))
    assert all({name for name in entry if name.startswith("loss")} == {"loss", "loss_word_prediction"}
               for entry in summary["history"])
    assert summary["args"]["image_tower_only"] is True
    # only the image tower and the word head move: everything else stays at its (seeded) initialisation
    after_one, after_two = final_state(one), final_state(two)
    moved = {name for name in after_two if not torch.equal(after_one[name], after_two[name])}
    assert moved and all(".vision_model." in f".{name}" or name.startswith("word_head.") for name in moved)
    assert any(name.startswith("word_head.") for name in moved)
    assert "image tower and its word head only" in open(two / "README.md").read()
    # the second stage: all the losses, from the first stage's checkpoint
    joint = train(pairs_file, tmp_path / "joint", "--model_name_or_path", str(two), "--max_steps", "1")
    assert joint["global_step"] == 1
    assert "loss_itc" in json.load(open(tmp_path / "joint" / "results.json"))["history"][0]
    with pytest.raises(ValueError, match="word_prediction_loss_weight 0"):
        train(pairs_file, tmp_path / "no_head", "--image_tower_only", "--word_prediction_loss_weight", "0", "--max_steps", "1")
    with pytest.raises(ValueError, match="momentum copy"):
        train(pairs_file, tmp_path / "momentum", "--image_tower_only", "--word_prediction_loss_weight", "1",
              "--momentum_distillation", "--max_steps", "1")


def test_image_tower_steps_run_both_stages_in_one_command(pairs_file, tmp_path):
    """--image_tower_steps N (the main job's two stages) = --image_tower_only for N steps at
    --image_tower_learning_rate into <output_dir>-tower, then the run from that checkpoint."""
    words = ("--word_prediction_loss_weight", "1")
    result = train(pairs_file, tmp_path / "main", *words, "--image_tower_steps", "2", "--image_tower_learning_rate", "5e-3",
                   "--max_steps", "2", "--checkpointing_steps", "1")
    tower = tmp_path / "main-tower"
    first = json.load(open(tower / "results.json"))
    assert first["global_step"] == 2 and first["args"]["image_tower_only"] is True
    assert first["args"]["learning_rate"] == first["args"]["vision_learning_rate"] == 5e-3
    assert all(set(name for name in entry if name.startswith("loss")) == {"loss", "loss_word_prediction"}
               for entry in first["history"])
    second = json.load(open(tmp_path / "main" / "results.json"))
    assert result["global_step"] == 2 and second["args"]["model_name_or_path"] == str(tower)
    assert "loss_itc" in second["history"][0]
    # the same first stage as the two-command recipe
    train(pairs_file, tmp_path / "by_hand", *words, "--image_tower_only", "--max_steps", "2", "--learning_rate", "5e-3")
    by_hand, in_one = final_state(tmp_path / "by_hand"), final_state(tower)
    assert all(torch.allclose(by_hand[name], in_one[name], atol=1e-6) for name in by_hand)
    # a resume goes on with the second stage from the first stage's checkpoint, without training the tower again
    written = os.path.getmtime(tower / "model.safetensors")
    resumed = train(pairs_file, tmp_path / "main", *words, "--image_tower_steps", "2", "--image_tower_learning_rate", "5e-3",
                    "--max_steps", "2", "--resume_from_checkpoint", str(tmp_path / "main" / "checkpoints" / "step_1"))
    assert resumed["global_step"] == 2 and os.path.getmtime(tower / "model.safetensors") == written


def test_the_main_job_script_runs_both_stages(pairs_file, tmp_path):
    """scripts/run_main.sh: its two stages' flags come first, so the caller's flags override them."""
    root = Path(__file__).resolve().parents[1]
    out = tmp_path / "main"
    subprocess.run(["bash", str(root / "scripts" / "run_main.sh"), "--dataset", pairs_file, "--output_dir", str(out), *TINY,
                    "--word_prediction_loss_weight", "1", "--image_tower_steps", "2", "--max_steps", "1"],
                   cwd=root, check=True, env={**os.environ, "SISC_NUM_THREADS": "1"})
    assert json.load(open(tmp_path / "main-tower" / "results.json"))["global_step"] == 2
    summary = json.load(open(out / "results.json"))
    assert summary["global_step"] == 1 and summary["args"]["num_epochs"] == 7  # the script's stage-2 length, overridden
    assert summary["args"]["model_name_or_path"] == str(tmp_path / "main-tower")
    config = json.load(open(out / "config.json"))  # the first stage's new model took --text_dropout 0, the second kept it
    assert config["text_config"]["hidden_dropout_prob"] == config["fusion_encoder_config"]["attention_probs_dropout_prob"] == 0


def test_image_tower_steps_refuse_what_cannot_go_with_them(pairs_file, tmp_path):
    with pytest.raises(ValueError, match="--image_tower_steps 0"):
        train(pairs_file, tmp_path / "a", "--image_tower_steps", "2", "--model_name_or_path", str(tmp_path / "x"))
    with pytest.raises(ValueError, match="pass only one of the two"):
        train(pairs_file, tmp_path / "b", "--image_tower_steps", "2", "--image_tower_only")
    with pytest.raises(FileNotFoundError, match="first stage's model"):
        train(pairs_file, tmp_path / "c", "--image_tower_steps", "2", "--resume_from_checkpoint", "latest")
