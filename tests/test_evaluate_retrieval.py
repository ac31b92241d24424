"""train/evaluate_retrieval.py: data loading (Karpathy JSON, pair files), ITC ranking, ITM re-ranking, several
processes, the command line's table and JSON."""

import json
import os
import signal
import socket
import subprocess
import sys

import pytest
import torch
from PIL import Image

from modeling_sisc import SiscModel
from sisc_train.data.pairs import load_pairs
from sisc_train.evaluation.retrieval import (
    BadEvaluationData,
    EncodedSet,
    RetrievalSet,
    encode_set,
    evaluate_retrieval,
    itm_rerank,
    load_retrieval_set,
    main,
)
from sisc_train.evaluation.retrieval_metrics import retrieval_metrics
from tests.helpers.tiny_data import COLOURS, save_tiny_checkpoint, truncate, write_karpathy

WORKER = os.path.join(os.path.dirname(__file__), "helpers", "evaluate_retrieval_worker.py")


@pytest.fixture(scope="module")
def karpathy(tmp_path_factory):
    return write_karpathy(tmp_path_factory.mktemp("karpathy"))


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    """A random tiny SISC pretraining checkpoint with its processor."""
    return save_tiny_checkpoint(tmp_path_factory.mktemp("ckpt"))


@pytest.fixture(scope="module")
def model_and_processor(checkpoint):
    from transformers import AutoProcessor

    return SiscModel.from_pretrained(checkpoint).eval(), AutoProcessor.from_pretrained(checkpoint, trust_remote_code=True)


def test_karpathy_json_splits(karpathy):
    test = load_retrieval_set(str(karpathy), "test")
    assert len(test.images) == 7 and len(test.captions) == 14  # the caption-less entry is left out
    assert test.caption_to_image == [i // 2 for i in range(14)]
    assert test.images[0].endswith(os.path.join("images", "14.png"))
    # relevance from shared captions: at least each caption's own image
    assert test.relevance.shape == (14, 7) and test.relevance[range(14), test.caption_to_image].all()
    assert len(load_retrieval_set(str(karpathy), "validation").images) == 4  # alias of "val"
    train = load_pairs(str(karpathy), "train")
    assert len(train) == 20 and len(set(train["image_id"])) == 10  # restval counts as train
    with pytest.raises(ValueError, match="no image with captions in split 'dev2'.*'restval', 'test', 'train', 'val'"):
        load_retrieval_set(str(karpathy), "dev2")


def test_image_root_and_max_images(karpathy, tmp_path):
    moved = tmp_path / "elsewhere"
    os.rename(karpathy.parent / "images", moved)
    try:
        data = load_retrieval_set(str(karpathy), "test", image_root=str(tmp_path), max_images=3)
        assert data.images[0] == os.path.join(str(tmp_path), "images", "14.png")
        assert len(data.images) == 3 and len(data.captions) == 6
    finally:
        os.rename(moved, karpathy.parent / "images")


def test_pair_file_rows_of_one_image_form_one_item(tmp_path):
    Image.new("RGB", (8, 8), (1, 2, 3)).save(tmp_path / "a.png")
    Image.new("RGB", (8, 8), (3, 2, 1)).save(tmp_path / "b.png")
    rows = [{"image": "a.png", "caption": ["one", "two"]}, {"image": "b.png", "caption": "three"},
            {"image": "a.png", "caption": []}]  # no caption: no retrieval item (the training collator counts it)
    (tmp_path / "pairs.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    data = load_retrieval_set(str(tmp_path / "pairs.jsonl"))
    assert data.captions == ["one", "two", "three"] and data.caption_to_image == [0, 0, 1] and len(data.images) == 2


def test_a_split_the_data_lacks_is_refused(karpathy, tmp_path):
    import datasets

    from sisc_train.data.pairs import data_splits

    Image.new("RGB", (8, 8), (1, 2, 3)).save(tmp_path / "a.png")
    (tmp_path / "pairs.jsonl").write_text(json.dumps({"image": "a.png", "caption": "one"}) + "\n")
    pairs = str(tmp_path / "pairs.jsonl")
    # a data file has one split, "train": asking for "test" is an error, not an evaluation on the training rows
    with pytest.raises(ValueError, match=r"no split 'test': it is a single data file"):
        load_pairs(pairs, "test")
    with pytest.raises(ValueError, match=r"no split 'test'"):
        load_retrieval_set(pairs, "test")
    whole = load_retrieval_set(pairs)  # no split asked: the whole file, described as such
    assert whole.captions == ["one"] and whole.description == pairs
    # a saved DatasetDict and an imagefolder have their own splits, which the error names
    rows = datasets.Dataset.from_dict({"image": [str(tmp_path / "a.png")], "caption": ["one"]})
    datasets.DatasetDict({"train": rows, "validation": rows}).save_to_disk(str(tmp_path / "saved"))
    with pytest.raises(ValueError, match=r"no split 'test'; its splits are \['train', 'validation'\]"):
        load_retrieval_set(str(tmp_path / "saved"), "test")
    assert load_retrieval_set(str(tmp_path / "saved"), "validation").captions == ["one"]
    rows.save_to_disk(str(tmp_path / "saved_single"))  # a single saved Dataset is one split, like a file
    with pytest.raises(ValueError, match=r"no split 'test': it is a single data file"):
        load_retrieval_set(str(tmp_path / "saved_single"), "test")
    (tmp_path / "folder" / "train").mkdir(parents=True)
    Image.new("RGB", (8, 8)).save(tmp_path / "folder" / "train" / "a.png")
    with pytest.raises(ValueError, match=r"no split 'test'; its splits are \['train'\]"):
        load_retrieval_set(str(tmp_path / "folder"), "test")
    assert data_splits(str(karpathy)) == ["test", "train", "val"] and data_splits(pairs) == ["train"]


def test_itc_metrics_equal_the_metrics_of_the_similarity_matrix(model_and_processor, karpathy):
    model, processor = model_and_processor
    data = load_retrieval_set(str(karpathy), "test")
    results = evaluate_retrieval(model, processor, data, image_batch_size=3, text_batch_size=5)
    from sisc_train.data.images import decode_image

    with torch.no_grad():
        inputs = processor(images=[decode_image(p) for p in data.images], text=data.captions, return_tensors="pt", padding=True)
        image = model.get_image_features(inputs["pixel_values"])
        text = model.get_text_features(inputs["input_ids"], inputs["attention_mask"])
    expected = retrieval_metrics(image @ text.t(), data.caption_to_image, data.relevance)  # shared-caption relevance
    assert "tr_map_r" in expected
    assert results["itc"].keys() == expected.keys()
    for key, value in expected.items():
        assert results["itc"][key] == pytest.approx(value), key
    assert results["timing"]["items_encoded_per_second"] > 0 and "itm_top16" not in results


def test_rerank_scores_are_itm_log_odds_of_the_top_k_above_the_rest(model_and_processor, karpathy):
    model, processor = model_and_processor
    data = load_retrieval_set(str(karpathy), "test")
    encoded = encode_set(model, processor, data, keep_hidden=True)
    similarity = encoded.image_embeds @ encoded.text_embeds.t()
    k = 4
    by_image = itm_rerank(model, encoded, similarity, k, image_queries=True, batch_size=6)
    by_text = itm_rerank(model, encoded, similarity, k, image_queries=False, batch_size=5)
    from sisc_train.data.images import decode_image

    images = [decode_image(p) for p in data.images]
    for scores, itc, queries_are_images in ((by_image, similarity, True), (by_text, similarity.t(), False)):
        scores = scores if queries_are_images else scores.t()
        for q in range(itc.shape[0]):
            top = set(itc[q].topk(k).indices.tolist())
            rest = [c for c in range(itc.shape[1]) if c not in top]
            assert min(scores[q, sorted(top)]) > max(scores[q, rest])  # the k candidates come first
            # outside the top k the ITC order is kept exactly, ties included (pairwise order relations are equal)
            kept, before = scores[q, rest], itc[q, rest]
            assert torch.equal(kept[:, None] > kept[None, :], before[:, None] > before[None, :])
            for c in top:  # the top k get the ITM log-odds of the pair, computed here from raw inputs
                image_index, text_index = (q, c) if queries_are_images else (c, q)
                inputs = processor(images=[images[image_index]], text=[data.captions[text_index]], return_tensors="pt",
                                   padding="max_length", max_length=encoded.text_mask.shape[1])
                with torch.no_grad():
                    logits = model.get_itm_logits(inputs["input_ids"], inputs["attention_mask"], inputs["pixel_values"])
                assert scores[q, c].item() == pytest.approx((logits[0, 1] - logits[0, 0]).item(), abs=1e-4)


def test_itm_plus_itc_adds_the_itc_logit_to_the_itm_log_odds_of_the_top_k(model_and_processor, karpathy):
    model, processor = model_and_processor
    data = load_retrieval_set(str(karpathy), "test")
    encoded = encode_set(model, processor, data, keep_hidden=True)
    similarity = encoded.image_embeds @ encoded.text_embeds.t()
    scale = model.logit_scale_value().item()
    for image_queries in (True, False):
        itm = itm_rerank(model, encoded, similarity, 4, image_queries=image_queries)
        both = itm_rerank(model, encoded, similarity, 4, image_queries=image_queries, score="itm+itc")
        itc = similarity if image_queries else similarity.t()
        itm, both = (itm, both) if image_queries else (itm.t(), both.t())
        top = itc.topk(4, dim=1).indices
        assert torch.allclose(both.gather(1, top), itm.gather(1, top) + scale * itc.gather(1, top), atol=1e-4)
        # the rest keeps its ITC order below the top k
        assert (both.gather(1, top).min(dim=1).values[:, None] > both.scatter(1, top, float("-inf"))).all()
    with pytest.raises(ValueError, match="unknown re-ranking score 'itc'"):
        itm_rerank(model, encoded, similarity, 4, image_queries=True, score="itc")


def test_itm_plus_itc_with_a_constant_itm_keeps_the_itc_order():
    """When the ITM head cannot tell the candidates apart, ITM + ITC ranks them as ITC does (ITM alone would tie them)."""
    itc = torch.tensor([[0.2, 0.9, -0.1, 0.5]])
    encoded = EncodedSet(torch.zeros(1, 2), torch.zeros(4, 2), torch.zeros(1, 3, 2), torch.zeros(4, 3, 2), torch.ones(4, 3))
    reranked = itm_rerank(_FixedItmWithTemperature(), encoded, itc, 3, image_queries=True, score="itm+itc")
    assert reranked[0].argsort(descending=True).tolist() == [1, 3, 0, 2]
    assert reranked[0, 1].item() == pytest.approx(5.0 + 10 * 0.9)


def test_rerank_keeps_the_itc_order_of_nearly_equal_and_tied_scores():
    """Scores one float32 step apart, and exact ties, outside the top k: a constant shift would round them together
    or swap them on some machines; the ranks keep them."""
    from sisc_train.evaluation.retrieval import strictly_greater_counts

    base = torch.tensor(0.3)
    step = torch.nextafter(base, torch.tensor(1.0)) - base
    row = torch.stack([base + 40 * step, base + 2 * step, base + step, base + step, base, torch.tensor(-0.9)])
    assert strictly_greater_counts(row[None]).tolist() == [[0.0, 1.0, 2.0, 2.0, 4.0, 5.0]]
    assert strictly_greater_counts(row[None].repeat(5, 1), chunk_elements=12).tolist() == [[0.0, 1.0, 2.0, 2.0, 4.0, 5.0]] * 5


class _FixedItm:
    """Stands in for a model whose ITM log-odds are 5.0 for every pair."""

    device = torch.device("cpu")

    def get_itm_logits(self, attention_mask, text_hidden_states, image_hidden_states, image_index=None):
        return torch.tensor([[0.0, 5.0]]).repeat(len(attention_mask), 1)


class _FixedItmWithTemperature(_FixedItm):
    def logit_scale_value(self):
        return torch.tensor(10.0)


def test_rerank_order_outside_the_top_k_survives_near_ties():
    base = torch.tensor(0.3)
    step = torch.nextafter(base, torch.tensor(1.0)) - base
    itc = torch.stack([base + 40 * step, base + 2 * step, base + step, base + step, base])[None]  # 1 image x 5 captions
    encoded = EncodedSet(torch.zeros(1, 2), torch.zeros(5, 2), torch.zeros(1, 3, 2), torch.zeros(5, 3, 2), torch.ones(5, 3))
    reranked = itm_rerank(_FixedItm(), encoded, itc, 1, image_queries=True)
    assert reranked[0, 0].item() == 5.0
    rest, before = reranked[0, 1:], itc[0, 1:]
    assert torch.equal(rest[:, None] > rest[None, :], before[:, None] > before[None, :])
    assert rest[1] == rest[2] and (rest < 5.0).all()


def test_rerank_with_k_covering_everything_ranks_by_itm_alone(model_and_processor):
    model, processor = model_and_processor
    images = [Image.new("RGB", (16, 16), c) for c in COLOURS.values()]
    data = RetrievalSet(images, [f"a {name} square" for name in COLOURS], [0, 1, 2, 3])
    results = evaluate_retrieval(model, processor, data, rerank_k=100)  # k is capped at the number of candidates
    assert set(results) == {"itc", "itm_top100", "itm_itc_top100", "timing", "skipped"}
    assert results["timing"]["rerank_seconds"] >= 0
    assert results["skipped"]["pairs"] == results["skipped"]["images"] == 0


@pytest.fixture(scope="module")
def karpathy_with_a_truncated_image(tmp_path_factory):
    """The tiny Karpathy data with the 2nd test image (15.png, 2 captions) truncated."""
    path = write_karpathy(tmp_path_factory.mktemp("karpathy_bad"))
    truncate(path.parent / "images" / "15.png")
    return path


def test_unreadable_images_are_left_out_with_their_captions(model_and_processor, karpathy, karpathy_with_a_truncated_image):
    model, processor = model_and_processor
    bad = load_retrieval_set(str(karpathy_with_a_truncated_image), "test")
    results = evaluate_retrieval(model, processor, bad, rerank_k=3, image_batch_size=3, max_bad_fraction=0.2)
    assert results["skipped"]["reasons"] == {"bad image (OSError)": 2}
    assert {k: results["skipped"][k] for k in ("pairs", "of_pairs", "images", "of_images")} == {
        "pairs": 2, "of_pairs": 14, "images": 1, "of_images": 7}
    assert results["skipped"]["examples"][0].startswith("1: ") and results["skipped"]["examples"][0].endswith("15.png")
    assert {"itc", "itm_top3"} <= set(results) and results["itc"].get("tr_no_caption", 0) == 0
    # what is ranked: the six readable images and their twelve captions
    good = load_retrieval_set(str(karpathy), "test")
    readable = good.subset([0, 2, 3, 4, 5, 6], [0, 1, *range(4, 14)], "without 15.png")
    encoded, expected = encode_set(model, processor, bad, max_bad_fraction=0.2), encode_set(model, processor, readable)
    assert encoded.data.captions == readable.captions and encoded.data.caption_to_image == readable.caption_to_image
    assert [os.path.basename(p) for p in encoded.data.images] == [os.path.basename(p) for p in readable.images]
    torch.testing.assert_close(encoded.image_embeds, expected.image_embeds, rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(encoded.text_embeds, expected.text_embeds, rtol=1e-4, atol=1e-5)
    # 2 of 14 pairs is more than 10 %
    with pytest.raises(BadEvaluationData, match=r"2 of 14 samples .*max_bad_fraction.*15\.png"):
        evaluate_retrieval(model, processor, bad, max_bad_fraction=0.1)


def test_empty_captions_are_left_out_and_nothing_readable_is_an_error(model_and_processor):
    model, processor = model_and_processor
    images = [Image.new("RGB", (16, 16), c) for c in COLOURS.values()]
    data = RetrievalSet(images, ["a red square", " ", "a blue square", "a yellow square"], [0, 1, 2, 3])
    results = evaluate_retrieval(model, processor, data, max_bad_fraction=0.5)
    assert results["skipped"]["reasons"] == {"empty caption": 1} and results["skipped"]["images"] == 0
    assert results["itc"]["tr_no_caption"] == 1  # the green square stays a candidate, without a caption to find
    with pytest.raises(BadEvaluationData, match="nothing readable"):
        evaluate_retrieval(model, processor, RetrievalSet(["/nowhere/a.png"], ["a"], [0]), max_bad_fraction=1.0)


@pytest.mark.parametrize("processes", [1, 2, 3, 4])
def test_accelerate_shares_are_contiguous_and_in_process_order(processes):
    """What encoding and re-ranking rely on from Accelerate's split_between_processes (no padding): the shares of a
    list or a tensor, taken in process order, are the items in their order, and differ by at most one item."""
    from types import SimpleNamespace

    from accelerate import PartialState

    for n in range(12):
        for items in (list(range(n)), torch.arange(n)):
            shares = []
            for rank in range(processes):
                state = SimpleNamespace(num_processes=processes, process_index=rank)
                with PartialState.split_between_processes(state, items) as share:
                    assert type(share) is type(items)
                    shares.append(list(map(int, share)))
            assert [i for share in shares for i in share] == list(range(n)), (n, processes)
            sizes = [len(share) for share in shares]
            assert max(sizes) - min(sizes) <= 1 and sizes == sorted(sizes, reverse=True)


def run_cli(args, processes=1, timeout=240):
    env = {k: v for k, v in os.environ.items() if k not in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT")}
    command = [sys.executable, WORKER, *args]
    if processes > 1:
        # the command train/launch.py prints for several CPU processes: Accelerate's multi-process launcher (torchrun,
        # gloo) told to use the CPU; a free port, as tests may run side by side
        with socket.socket() as probe:
            probe.bind(("127.0.0.1", 0))
            port = probe.getsockname()[1]
        accelerate = os.path.join(os.path.dirname(sys.executable), "accelerate")
        command = [accelerate, "launch", "--multi_gpu", "--num_processes", str(processes), "--num_cpu_threads_per_process",
                   "1", "--num_machines", "1", "--mixed_precision", "no", "--dynamo_backend", "no",
                   "--main_process_port", str(port), *command[1:]]
        env["ACCELERATE_USE_CPU"] = "true"
    proc = subprocess.Popen(command, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, start_new_session=True)
    try:
        stdout, stderr = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        subprocess.run(["pkill", "-9", "-f", args[-1]], check=False)  # torchrun workers, by their unique output path
        pytest.fail(f"{processes}-process evaluation timed out")
    assert proc.returncode == 0, stderr[-3000:]
    return stdout


def test_two_processes_give_the_numbers_of_one(checkpoint, karpathy, tmp_path):
    common = ["--model", str(checkpoint), "--data", str(karpathy), "--split", "test", "--rerank_k", "3",
              "--image_batch_size", "2", "--text_batch_size", "3", "--itm_batch_size", "4", "--output_json"]
    stdout = run_cli([*common, str(tmp_path / "one.json")])
    assert "itm_top3" in stdout and "tr_r1" in stdout and "results written to" in stdout
    run_cli([*common, str(tmp_path / "two.json")], processes=2)
    one, two = (json.loads((tmp_path / name).read_text()) for name in ("one.json", "two.json"))
    assert one["num_processes"] == 1 and two["num_processes"] == 2
    assert one["num_images"] == two["num_images"] == 7
    for mode in ("itc", "itm_top3"):
        assert one["results"][mode] == pytest.approx(two["results"][mode]), mode


def test_two_processes_agree_on_the_unreadable_images(checkpoint, karpathy_with_a_truncated_image, tmp_path):
    """The truncated image is in the first process's shard: both processes leave out the same items."""
    common = ["--model", str(checkpoint), "--data", str(karpathy_with_a_truncated_image), "--split", "test",
              "--rerank_k", "3", "--image_batch_size", "2", "--text_batch_size", "3", "--itm_batch_size", "4",
              "--max_bad_fraction", "0.2", "--output_json"]
    stdout = run_cli([*common, str(tmp_path / "one.json")])
    assert "left out 2 of 14 (image, caption) pairs" in stdout and "15.png" in stdout
    run_cli([*common, str(tmp_path / "two.json")], processes=2)
    one, two = (json.loads((tmp_path / name).read_text()) for name in ("one.json", "two.json"))
    assert one["results"]["skipped"] == two["results"]["skipped"] and one["results"]["skipped"]["images"] == 1
    for mode in ("itc", "itm_top3"):
        assert one["results"][mode] == pytest.approx(two["results"][mode]), mode


def test_fewer_items_than_processes(checkpoint, tmp_path):
    """One image and one caption on two processes: the second process's shares are empty (it still takes part in
    every gather, with tensors of the right shape), and the numbers are those of one process."""
    Image.new("RGB", (16, 16), "red").save(tmp_path / "a.png")
    pairs = tmp_path / "pairs.jsonl"
    pairs.write_text(json.dumps({"image": str(tmp_path / "a.png"), "caption": "a red square"}) + "\n")
    common = ["--model", str(checkpoint), "--data", str(pairs), "--rerank_k", "1", "--output_json"]
    run_cli([*common, str(tmp_path / "one.json")])
    run_cli([*common, str(tmp_path / "two.json")], processes=2)
    one, two = (json.loads((tmp_path / name).read_text()) for name in ("one.json", "two.json"))
    assert two["num_processes"] == 2 and two["num_images"] == two["num_captions"] == 1
    for mode in ("itc", "itm_top1"):
        assert one["results"][mode] == pytest.approx(two["results"][mode]), mode


def test_cli_in_process_writes_json_and_table(checkpoint, karpathy, tmp_path, capsys):
    out = tmp_path / "results.json"
    summary = main(["--model", str(checkpoint), "--data", str(karpathy), "--rerank_k", "0", "--output_json", str(out)])
    saved = json.loads(out.read_text())
    assert saved["results"]["itc"] == pytest.approx(summary["results"]["itc"])
    assert set(saved["results"]) == {"itc", "timing", "skipped"}
    printed = capsys.readouterr().out
    assert "dataset_tiny.json (test): 7 images, 14 captions" in printed and "r_mean" in printed


def test_eval_speed_benchmark_runs(checkpoint, karpathy, tmp_path, capsys):
    sys.path.insert(0, os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "benchmarks"))
    import eval_speed

    result = eval_speed.main(["--model", str(checkpoint), "--data", str(karpathy), "--rerank_k", "2", "4",
                              "--rounds", "1", "--output", str(tmp_path / "speed.json")])
    assert set(result["rerank_cost_ratio"]) == {2, 4} and result["throughput"]["items_per_second"] > 0
    assert "with ITM re-ranking of the top 4" in capsys.readouterr().out
    assert json.loads((tmp_path / "speed.json").read_text())["num_images"] == 7
