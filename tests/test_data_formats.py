"""The data formats people have (sisc_train/data/formats.py): each fixture format loads into the rows the trainers
read, relative paths resolved, malformed files fail with errors that name the file and the field, and one short run
of the pretraining, VQA and NLVR trainers on one format each."""

import json
import os

import pytest

from processing_sisc import build_default_processor
from sisc_train.data.formats import detect_format, shard_files, stable_id
from sisc_train.data.pairs import PairCollator, data_splits, load_pairs, missing_split
from sisc_train.data.tasks import load_task_data
from sisc_train.evaluation.retrieval import load_retrieval_set
from sisc_train.tasks import nlvr as finetune_nlvr
from sisc_train.tasks import pretraining as pretrain
from sisc_train.tasks import vqa as finetune_vqa
from tests.helpers import format_data as fd

TINY = ["--image_size", "16", "--hidden_size", "32", "--num_workers", "0", "--report_to", "none", "--max_steps", "2",
        "--warmup_steps", "1", "--logging_steps", "1", "--per_device_batch_size", "4"]


@pytest.fixture(scope="module")
def root(tmp_path_factory):
    return tmp_path_factory.mktemp("formats")


# ---- image-caption formats ----
def test_albef_pretraining_list(root):
    path = fd.write_albef_pretraining(str(root / "albef"))
    assert detect_format(path) == "rows"
    rows = load_pairs(path)
    assert len(rows) == 12 and rows.column_names == ["image", "caption", "image_id"]
    assert rows[0]["image"] == str(root / "albef" / "images" / "0.jpg")  # relative to the file's folder
    # the two captions of image 0 share its id (derived from the path); other images have other ids
    assert rows[0]["image_id"] == rows[1]["image_id"] == stable_id(rows[0]["image"]) != rows[2]["image_id"]
    batch = PairCollator(_processor())(list(rows))
    assert batch["num_skipped"] == 0 and len(set(batch["image_ids"].tolist())) == 8


def test_albef_retrieval_files(root):
    train, test = fd.write_albef_retrieval(str(root / "ret"))
    rows = load_pairs(train, image_root=str(root / "ret"))
    assert len(rows) == 8 and os.path.exists(rows[0]["image"])
    ids = list(rows["image_id"])  # "coco_0" ... become ints, one per string id
    assert ids[0] == ids[1] == stable_id("coco_0") and len(set(ids)) == 4
    evaluation = load_retrieval_set(test, image_root=str(root / "ret"))  # a file: evaluated whole
    assert len(evaluation.images) == 4 and len(evaluation.captions) == 12
    assert evaluation.caption_to_image == [0, 0, 0, 1, 1, 1, 2, 2, 2, 3, 3, 3]
    assert missing_split(test, "test").startswith(f"{test!r} has no split 'test'")


def test_coco_captions(root):
    path = fd.write_coco_captions(str(root / "coco"))
    assert detect_format(path) == "coco_captions" and data_splits(path) == ["train"]
    rows = load_pairs(path)  # images found in COCO's train2017/ next to annotations/
    assert len(rows) == 12 and rows[0] == {"image": str(root / "coco" / "train2017" / "000000001000.jpg"),
                                           "caption": "A red square.", "image_id": 1000}
    evaluation = load_retrieval_set(path)
    assert len(evaluation.images) == 6 and len(evaluation.captions) == 12
    with pytest.raises(FileNotFoundError, match=r"captions_train2017.json: the image of row 0 .* is not at "
                                                r"/data/coco/images/000000001000.jpg; pass --image_root"):
        load_pairs(path, image_root="/data/coco/images")


def test_webdataset_shards(root):
    folder = fd.write_shards(str(root / "shards"))
    for source in (folder, f"{folder}/*.tar", f"{folder}/{{00000..00001}}.tar", f"{folder}/00000.tar"):
        assert detect_format(source) == "webdataset"
    assert [os.path.basename(f) for f in shard_files(f"{folder}/{{00000..00001}}.tar")] == ["00000.tar", "00001.tar"]
    rows = load_pairs(f"{folder}/*.tar")
    assert len(rows) == 10 and rows[0]["caption"] == "a red square" and rows[0]["image"]["bytes"]
    assert len(set(rows["image_id"])) == 10
    streamed = load_pairs(folder, streaming=True)
    assert [r["caption"] for r in streamed] == list(rows["caption"])
    assert PairCollator(_processor())(list(rows))["num_skipped"] == 0
    # .png + .json only (no .txt): the caption is the .json's "caption"
    png = load_pairs(fd.write_shards(str(root / "png_shards"), shards=1, extension="png", with_txt=False))
    assert len(png) == 5 and png[1]["caption"] == "a green square"
    with pytest.raises(FileNotFoundError, match="no shard"):
        load_pairs(f"{folder}/{{00000..00003}}.tar")


def test_hub_dataset_with_configs(root):
    folder = fd.write_hub_standin(str(root / "hub"), configs=("squares", "other"))
    assert detect_format(folder) == "hub"
    assert data_splits(folder, dataset_config="squares") == ["train", "test"]
    rows = load_pairs(folder, "test", dataset_config="other")
    assert len(rows) == 8 and rows[0]["image"] == str(root / "hub" / "images" / "other-test-0.png")
    assert load_retrieval_set(folder, "test", dataset_config="squares").captions[1] == "squares 0"
    with pytest.raises(ValueError, match="--dataset_config 'nope'"):
        load_pairs(folder, "test", dataset_config="nope")
    with pytest.raises(ValueError, match="no split 'validation'; its splits are"):
        load_pairs(folder, "validation", dataset_config="squares")
    # pretraining's data settings: --dataset FOLDER --dataset_config squares --eval_split test
    train, evaluation, _ = pretrain.load_data(pretrain.DataArguments(dataset=folder, dataset_config="squares", eval_split="test"))
    assert len(train) == 16 and len(evaluation["test"].images) == 4
    with pytest.raises(ValueError, match=r"--eval_split 'val': .* its splits are \['train', 'test'\]"):
        pretrain.load_data(pretrain.DataArguments(dataset=folder, dataset_config="squares", eval_split="val"))


# ---- VQA and NLVR formats ----
def test_official_vqa_v2(root):
    folder = fd.write_vqa_v2(str(root / "vqa"), str(root / "coco_images"))
    assert detect_format(folder, accepted=("vqa_v2",)) == "vqa_v2"
    data = load_task_data("vqa", folder, image_root=str(root / "coco_images"))
    assert sorted(data) == ["test-dev", "train", "validation"]
    row = data["train"][4]  # image 501, question 1; the annotations were in reverse order
    assert row["question_id"] == 501001 and row["question"] == "is there a square?"
    assert [a["answer"] for a in row["answers"]] == ["yes"] * 8 + ["no"] * 2 and row["answer_type"] == "yes/no"
    assert row["image"] == str(root / "coco_images" / "train2014" / "COCO_train2014_000000000501.jpg")
    assert data["test-dev"][0]["answers"] == []  # no annotations: predictions only
    one = load_task_data("vqa", os.path.join(folder, "v2_OpenEnded_mscoco_val2014_questions.json"),
                         image_root=str(root / "coco_images" / "val2014"))
    assert list(one) == ["validation"] and len(one["validation"]) == 6
    with pytest.raises(FileNotFoundError, match="v2_OpenEnded_mscoco_train2014_questions.json: the image of row 0"):
        load_task_data("vqa", folder, image_root=str(root / "nowhere"), splits=["train"])
    with pytest.raises(ValueError, match=r"no split 'test'; its splits are \['test-dev', 'train', 'validation'\]"):
        load_task_data("vqa", folder, image_root=str(root / "coco_images"), splits=["train", "test"])


def test_albef_vqa(root):
    files = fd.write_albef_vqa(str(root / "albef_vqa"), str(root / "albef_images"))
    images = f"vqa={root / 'albef_images' / 'coco'},vg={root / 'albef_images' / 'vg'}"  # ALBEF's vqa_root / vg_root
    data = load_task_data("vqa", str(root / "albef_vqa"), image_root=images, splits=["train+vg_qa", "test"])
    train = data["train+vg_qa"]
    assert len(train) == 18 and train[-1]["image"] == str(root / "albef_images" / "vg" / "image" / "1.jpg")
    assert train[0]["multiple_choice_answer"] == "red" and len(train[0]["answers"]) == 10
    assert data["test"][0]["answers"] == []
    single = load_task_data("vqa", files["vqa_train"], image_root=str(root / "albef_images" / "coco"))
    assert list(single) == ["train"] and len(single["train"]) == 12


def test_official_nlvr2(root):
    folder = fd.write_nlvr2(str(root / "nlvr2"), str(root / "nlvr2_images"))
    data = load_task_data("nlvr", folder, image_root=str(root / "nlvr2_images"))
    assert sorted(data) == ["dev", "test", "train"]  # test1.json is the split "test"
    row = data["train"][1]  # train images are in numbered directory sub-folders
    assert row["left_image"] == str(root / "nlvr2_images" / "train" / "2" / "train-101-1-img0.png")
    assert row["label"] == 0 and data["train"][0]["label"] == 1
    assert all(os.path.exists(r["right_image"]) for r in data["dev"])
    # --image_root may also be the split's own folder
    dev = load_task_data("nlvr", os.path.join(folder, "dev.json"), image_root=str(root / "nlvr2_images" / "dev"))
    assert dev["dev"][0]["left_image"] == str(root / "nlvr2_images" / "dev" / "dev-100-0-img0.png")


def test_albef_nlvr(root):
    fd.write_albef_nlvr(str(root / "albef_data"), str(root / "albef_nlvr_images"))
    fd.write_albef_vqa(str(root / "albef_data"), str(root / "albef_data_images"))  # ALBEF's data/ holds both
    data = load_task_data("nlvr", str(root / "albef_data"), image_root=str(root / "albef_nlvr_images"))
    assert sorted(data) == ["dev", "test", "train"]
    assert data["dev"][1]["right_image"] == str(root / "albef_nlvr_images" / "nlvr_dev" / "1-img1.png")
    assert data["dev"]["label"][:2] == [1, 0]


def test_task_data_from_a_hub_dataset_config(root):
    folder = root / "nlvr_hub"
    card = ["---", "configs:", "- config_name: pairs", "  data_files:"]
    for split, n in (("train", 4), ("dev", 2)):
        rows = []
        for i in range(n):
            fd.square(str(folder / "images" / f"{split}{i}a.png"), i)
            fd.square(str(folder / "images" / f"{split}{i}b.png"), i + 1)
            rows.append({"sentence": "s", "left_image": f"images/{split}{i}a.png", "right_image": f"images/{split}{i}b.png",
                         "label": i % 2})
        (folder / f"{split}.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
        card += [f"  - split: {split}", f"    path: {split}.jsonl"]
    (folder / "README.md").write_text("\n".join([*card, "---", ""]))
    data = load_task_data("nlvr", str(folder), dataset_config="pairs", splits=["train", "dev"])
    assert len(data["train"]) == 4 and data["dev"][1]["right_image"] == str(folder / "images" / "dev1b.png")
    with pytest.raises(ValueError, match="no split 'test'"):
        load_task_data("nlvr", str(folder), dataset_config="pairs", splits=["test"])


# ---- malformed files: the error names the file and the field ----
def test_malformed_files_name_file_and_field(tmp_path):
    def write(name, content):
        path = tmp_path / name
        path.write_text(content if isinstance(content, str) else json.dumps(content))
        return str(path)

    instances = write("instances_val2017.json", {"images": [{"id": 1, "file_name": "1.jpg"}],
                                                 "annotations": [{"image_id": 1, "bbox": [0, 0, 1, 1]}]})
    with pytest.raises(ValueError, match=r"instances_val2017.json: the entries of 'annotations' lack the field\(s\) \['caption'\]"):
        load_pairs(instances)
    stray = write("captions_x.json", {"images": [{"id": 1, "file_name": "1.jpg"}], "annotations": [{"image_id": 2, "caption": "c"}]})
    with pytest.raises(ValueError, match="captions_x.json: annotation 0 has the image_id 2, which is not in the file's 'images'"):
        load_pairs(stray)
    nlvr = write("dev.json", "\n".join(json.dumps({"identifier": f"dev-1-0-{i}", "sentence": "s", "label": label})
                                       for i, label in enumerate(["True", "maybe"])))
    with pytest.raises(ValueError, match=r"dev.json: row 1: 'label' must be \"True\" or \"False\", not 'maybe'"):
        load_task_data("nlvr", nlvr)
    albef_nlvr = write("nlvr_dev.json", [{"images": ["a.png"], "sentence": "s", "label": "True"}])
    with pytest.raises(ValueError, match=r"nlvr_dev.json: row 0: 'images' must be a list of two image paths"):
        load_task_data("nlvr", albef_nlvr)
    albef_vqa = write("vqa_train.json", [{"question_id": 1, "question": "q?", "answer": [3], "image": "a.jpg"}])
    with pytest.raises(ValueError, match=r"vqa_train.json: row 0: 'answer' must be a list of answer strings"):
        load_task_data("vqa", albef_vqa)
    folder = tmp_path / "vqa"
    fd.write_vqa_v2(str(folder), str(tmp_path / "images"), subtypes=(("val2014", 1),))
    annotations = folder / "v2_mscoco_val2014_annotations.json"
    content = json.loads(annotations.read_text())
    content["annotations"][0]["question_id"] = 99
    annotations.write_text(json.dumps(content))
    with pytest.raises(ValueError, match=r"questions.json and .*annotations.json: 2 question ids are in only one of them"):
        load_task_data("vqa", str(folder), image_root=str(tmp_path / "images"))
    # a file of no known format, and a format this script does not read
    with pytest.raises(ValueError, match=r"numbers.json: not a data file SISC recognises: found a JSON list .* the formats accepted are"):
        load_pairs(write("numbers.json", [1, 2, 3]))
    with pytest.raises(ValueError, match="looks like 'albef_vqa' data, which this script does not read"):
        load_pairs(albef_vqa)
    with pytest.raises(ValueError, match="--data_format 'webdataset' is not one this script reads"):
        load_task_data("nlvr", nlvr, data_format="webdataset")


# ---- the trainers, one format each ----
def test_pretrain_on_webdataset_shards_with_a_coco_captions_evaluation(root, tmp_path):
    shards = fd.write_shards(str(root / "train_shards"), shards=2, per_shard=4)
    coco = fd.write_coco_captions(str(root / "coco_eval"), n=4)
    summary = pretrain.main(["--dataset", f"{shards}/{{00000..00001}}.tar", "--streaming", "--eval_dataset", coco,
                             "--output_dir", str(tmp_path), *TINY])
    assert summary["global_step"] == 2 and 0 <= summary["metrics"]["r_mean"] <= 100
    results = json.loads((tmp_path / "results.json").read_text())
    assert results["args"]["data_format"] is None and results["skipped_samples"] == 0 and results["seen_samples"] == 8


def test_vqa_on_official_vqa_v2(root, pretrained, tmp_path):
    folder = fd.write_vqa_v2(str(root / "vqa_run"), str(root / "vqa_run_images"))
    summary = finetune_vqa.main([
        "--model_name_or_path", str(pretrained), "--dataset", folder, "--image_root", str(root / "vqa_run_images"),
        "--eval_split", "test-dev", "--output_dir", str(tmp_path), "--vqa_head", "classify", *TINY[6:],
    ])
    assert summary["global_step"] == 2 and summary["train_questions"] == 12
    predictions = json.loads((tmp_path / "predictions_test-dev.json").read_text())
    assert len(predictions) == 6 and set(predictions[0]) == {"question_id", "answer"}


def test_nlvr_on_official_nlvr2(root, pretrained, tmp_path):
    folder = fd.write_nlvr2(str(root / "nlvr_run"), str(root / "nlvr_run_images"))
    summary = finetune_nlvr.main([
        "--model_name_or_path", str(pretrained), "--dataset", folder, "--image_root", str(root / "nlvr_run_images"),
        "--output_dir", str(tmp_path), *TINY[6:],
    ])
    assert summary["global_step"] == 2 and summary["train_examples"] == 6
    results = json.loads((tmp_path / "results.json").read_text())
    assert set(results["metrics"]) == {"dev", "test"} and results["metrics"]["test"]["num_examples"] == 4


def _processor():
    return build_default_processor(image_size=16)
