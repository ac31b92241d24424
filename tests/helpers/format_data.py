"""Tiny fixtures, one per data format of `sisc_train/data/formats.py`, written on the fly for the tests: real layouts
(file names, keys, image names) with a handful of rows and 12-pixel images."""

import io
import json
import os
import tarfile

from PIL import Image

COLOURS = {"red": (220, 30, 30), "green": (30, 200, 30), "blue": (30, 30, 220), "yellow": (230, 230, 30)}


def square(path, index, kind="PNG"):
    """A small coloured square (colour by index) saved at `path`; returns the colour name."""
    name = list(COLOURS)[index % 4]
    os.makedirs(os.path.dirname(path), exist_ok=True)
    Image.new("RGB", (12, 12), tuple(max(0, c - 4 * index) for c in COLOURS[name])).save(path, format=kind)
    return name


def write_albef_pretraining(folder, n=8):
    """ALBEF's pretraining list: images/<i>.jpg, captions one string or a list; paths relative to `folder`."""
    rows = []
    for i in range(n):
        name = square(os.path.join(folder, "images", f"{i}.jpg"), i, "JPEG")
        rows.append({"image": f"images/{i}.jpg", "caption": f"a {name} square" if i % 2 else [f"a {name} square", f"{name} {i}"]})
    path = os.path.join(folder, "pretrain.json")
    with open(path, "w") as handle:
        json.dump(rows, handle)
    return path


def write_albef_retrieval(folder, n=4):
    """ALBEF's retrieval files: coco_train.json (one caption per row, string image ids) and coco_test.json
    ({"image", "caption": [captions]}), images under <folder>/val2014/ and paths relative to <folder>."""
    train, test = [], []
    for i in range(n):
        name = square(os.path.join(folder, "val2014", f"COCO_val2014_{i:012d}.jpg"), i, "JPEG")
        image = f"val2014/COCO_val2014_{i:012d}.jpg"
        train += [{"caption": f"a {name} square", "image": image, "image_id": f"coco_{i}"},
                  {"caption": f"square number {i}", "image": image, "image_id": f"coco_{i}"}]
        test.append({"image": image, "caption": [f"a {name} square", f"square number {i}", f"{name} {i}"]})
    paths = []
    for split, rows in (("train", train), ("test", test)):
        paths.append(os.path.join(folder, "annotation", f"coco_{split}.json"))
        os.makedirs(os.path.dirname(paths[-1]), exist_ok=True)
        with open(paths[-1], "w") as handle:
            json.dump(rows, handle)
    return paths


def write_coco_captions(root, n=6):
    """COCO's layout: <root>/annotations/captions_train2017.json next to <root>/train2017/<12-digit id>.jpg."""
    images, annotations = [], []
    for i in range(n):
        image_id = 1000 + i
        name = square(os.path.join(root, "train2017", f"{image_id:012d}.jpg"), i, "JPEG")
        images.append({"license": 1, "file_name": f"{image_id:012d}.jpg", "height": 12, "width": 12, "id": image_id})
        annotations += [{"image_id": image_id, "id": 10 * i, "caption": f"A {name} square."},
                        {"image_id": image_id, "id": 10 * i + 1, "caption": f"Square {i}."}]
    path = os.path.join(root, "annotations", "captions_train2017.json")
    os.makedirs(os.path.dirname(path), exist_ok=True)
    with open(path, "w") as handle:
        json.dump({"info": {"year": 2017}, "licenses": [], "images": images, "annotations": annotations}, handle)
    return path


def write_shards(folder, shards=2, per_shard=5, extension="jpg", with_txt=True):
    """img2dataset's webdataset output: <folder>/00000.tar ... with <key>.jpg, <key>.txt, <key>.json per sample (and
    the .parquet / _stats.json files img2dataset writes beside them)."""
    os.makedirs(folder, exist_ok=True)
    for s in range(shards):
        with tarfile.open(os.path.join(folder, f"{s:05d}.tar"), "w") as tar:
            for i in range(per_shard):
                key = f"{s:05d}{i:04d}"
                buffer = io.BytesIO()
                name = list(COLOURS)[(s * per_shard + i) % 4]
                Image.new("RGB", (12, 12), COLOURS[name]).save(buffer, format="JPEG" if extension == "jpg" else "PNG")
                meta = {"url": f"http://example.com/{key}.jpg", "caption": f"a {name} square", "key": key, "status": "success",
                        "width": 12, "height": 12}
                members = [(f"{key}.{extension}", buffer.getvalue()), (f"{key}.json", json.dumps(meta).encode())]
                if with_txt:
                    members.append((f"{key}.txt", f"a {name} square".encode()))
                for member, data in members:
                    info = tarfile.TarInfo(member)
                    info.size = len(data)
                    tar.addfile(info, io.BytesIO(data))
        with open(os.path.join(folder, f"{s:05d}_stats.json"), "w") as handle:
            json.dump({"count": per_shard}, handle)
    return folder


QUESTIONS = [("what colour is the square?", None), ("is there a square?", "yes"), ("how many squares are there?", "1")]


def _vqa_answers(qi, name, image_id):
    answer = QUESTIONS[qi][1] or name
    return [answer] * 8 + ["no" if answer == "yes" else "2"] * 2


def write_vqa_v2(folder, image_root, subtypes=(("train2014", 4), ("val2014", 2), ("test-dev2015", 2))):
    """The official VQA v2 files (questions + annotations; test-dev without annotations) in `folder`, images
    COCO_<subtype>_<12-digit id>.jpg in <image_root>/<subtype>/."""
    os.makedirs(folder, exist_ok=True)
    for subtype, n in subtypes:
        questions, annotations = [], []
        for i in range(n):
            image_id = 500 + i
            name = square(os.path.join(image_root, subtype, f"COCO_{subtype}_{image_id:012d}.jpg"), i, "JPEG")
            for qi, (question, _) in enumerate(QUESTIONS):
                question_id = image_id * 1000 + qi
                questions.append({"image_id": image_id, "question": question, "question_id": question_id})
                answers = _vqa_answers(qi, name, image_id)
                annotations.append({
                    "question_type": question.rsplit(" ", 2)[0], "multiple_choice_answer": answers[0],
                    "answers": [{"answer": a, "answer_confidence": "yes", "answer_id": k + 1} for k, a in enumerate(answers)],
                    "image_id": image_id, "answer_type": "yes/no" if qi == 1 else ("number" if qi == 2 else "other"),
                    "question_id": question_id,
                })
        annotations.reverse()  # not in the questions' order: joined by question_id
        with open(os.path.join(folder, f"v2_OpenEnded_mscoco_{subtype}_questions.json"), "w") as handle:
            json.dump({"info": {}, "task_type": "Open-Ended", "data_type": "mscoco", "license": {}, "data_subtype": subtype,
                       "questions": questions}, handle)
        if not subtype.startswith("test"):
            with open(os.path.join(folder, f"v2_mscoco_{subtype}_annotations.json"), "w") as handle:
                json.dump({"info": {}, "license": {}, "data_subtype": subtype, "annotations": annotations,
                           "data_type": "mscoco"}, handle)
    return folder


def write_albef_vqa(folder, image_root):
    """ALBEF's VQA files: vqa_train.json, vg_qa.json (answers as string lists) and vqa_test.json (no answers); COCO
    images under <image_root>/coco, Visual Genome ones under <image_root>/vg."""
    os.makedirs(folder, exist_ok=True)
    files = {}
    for split, n, source in (("vqa_train", 4, "vqa"), ("vg_qa", 2, "vg"), ("vqa_test", 2, "vqa")):
        rows = []
        for i in range(n):
            image = f"train2014/COCO_train2014_{i:012d}.jpg" if source == "vqa" else f"image/{i}.jpg"
            name = square(os.path.join(image_root, "coco" if source == "vqa" else "vg", image), i, "JPEG")
            for qi, (question, _) in enumerate(QUESTIONS):
                row = {"question_id": i * 10 + qi, "question": question, "image": image, "dataset": source}
                if split != "vqa_test":
                    row["answer"] = _vqa_answers(qi, name, i)
                rows.append(row)
        files[split] = os.path.join(folder, f"{split}.json")
        with open(files[split], "w") as handle:
            json.dump(rows, handle)
    return files


def write_nlvr2(folder, image_root, sizes=(("train", 6), ("dev", 4), ("test1", 4))):
    """The official NLVR2 JSON-lines files (named .json) in `folder`, images <image_root>/<split>/[<directory>/]
    <split>-<set>-<pair>-img0.png / -img1.png (train in numbered directory sub-folders, as distributed)."""
    os.makedirs(folder, exist_ok=True)
    for split, n in sizes:
        lines = []
        for i in range(n):
            directory = i % 2 + 1 if split == "train" else None
            stem = f"{split}-{100 + i}-{i % 3}"
            where = os.path.join(image_root, split, str(directory)) if directory else os.path.join(image_root, split)
            left = square(os.path.join(where, f"{stem}-img0.png"), i)
            square(os.path.join(where, f"{stem}-img1.png"), i + 1)
            row = {"validation": {}, "sentence": f"the left image shows a {left} square", "left_url": "http://x/a.jpg",
                   "writer": "1", "label": "True" if i % 2 == 0 else "False", "right_url": "http://x/b.jpg",
                   "synset": "n0", "query": "q", "identifier": f"{stem}-{i % 4}", "extra_validations": {}}
            if directory:
                row["directory"] = directory
            lines.append(json.dumps(row))
        with open(os.path.join(folder, f"{split}.json"), "w") as handle:
            handle.write("\n".join(lines) + "\n")
    return folder


def write_albef_nlvr(folder, image_root, sizes=(("nlvr_train", 6), ("nlvr_dev", 4), ("nlvr_test", 4))):
    """ALBEF's NLVR files ({"images": [left, right], "sentence", "label": "True"/"False"}), images under image_root."""
    os.makedirs(folder, exist_ok=True)
    files = {}
    for split, n in sizes:
        rows = []
        for i in range(n):
            left = square(os.path.join(image_root, split, f"{i}-img0.png"), i)
            square(os.path.join(image_root, split, f"{i}-img1.png"), i + 1)
            rows.append({"images": [f"{split}/{i}-img0.png", f"{split}/{i}-img1.png"],
                         "sentence": f"the left image shows a {left} square", "label": "True" if i % 2 == 0 else "False"})
        files[split] = os.path.join(folder, f"{split}.json")
        with open(files[split], "w") as handle:
            json.dump(rows, handle)
    return files


def write_hub_standin(folder, configs=("squares",)):
    """A local folder laid out as a Hub dataset: data/<config>-<split>.jsonl (image paths relative to the folder) and
    a README.md whose YAML header lists the configurations and their splits."""
    card = ["---", "configs:"]
    for config in configs:
        card += [f"- config_name: {config}", "  data_files:"]
        for split, n in (("train", 8), ("test", 4)):
            rows = []
            for i in range(n):
                name = square(os.path.join(folder, "images", f"{config}-{split}-{i}.png"), i)
                rows.append({"image": f"images/{config}-{split}-{i}.png", "caption": [f"a {name} square", f"{config} {i}"]})
            path = os.path.join(folder, "data", f"{config}-{split}.jsonl")
            os.makedirs(os.path.dirname(path), exist_ok=True)
            with open(path, "w") as handle:
                handle.write("".join(json.dumps(row) + "\n" for row in rows))
            card += [f"  - split: {split}", f"    path: data/{config}-{split}.jsonl"]
    card += ["---", "", "# A local stand-in for a Hub dataset", ""]
    with open(os.path.join(folder, "README.md"), "w") as handle:
        handle.write("\n".join(card))
    return folder
