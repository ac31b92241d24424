"""The `evaluate` metric module metrics/retrieval_recall: loading (any cwd, offline, fresh process), hand-worked
values, batching, agreement with sisc_train.evaluation.retrieval_metrics (which it imports from the installed SISC),
the error without SISC, and input errors."""

import importlib.util
import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

# evaluate must never reach the Hub here (only local paths are loaded anyway)
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_EVALUATE_OFFLINE", "1")

import evaluate
import numpy as np
import pytest

import sisc_train.evaluation.retrieval_metrics as implementation
from sisc_train.evaluation.retrieval_metrics import retrieval_metrics

ROOT = Path(__file__).resolve().parents[1]
METRIC_DIR = ROOT / "metrics" / "retrieval_recall"

# 3 images x 4 captions. Image 0 owns captions 0 and 1, image 1 owns caption 2, image 2 owns caption 3.
REFERENCES = [[0, 1], [2], [3]]
PREDICTIONS = [
    # c0    c1    c2    c3
    [0.90, 0.20, 0.80, 0.10],  # image 0
    [0.70, 0.10, 0.60, 0.25],  # image 1
    [0.20, 0.50, 0.40, 0.30],  # image 2
]
# Ground truth beyond the own pairs: caption 0 is also true of image 1, caption 3 also of image 0.
RELEVANCE = np.array(
    [
        # i0 i1 i2
        [1, 1, 0],  # c0
        [1, 0, 0],  # c1
        [0, 1, 0],  # c2
        [1, 0, 1],  # c3
    ],
    dtype=bool,
)


@pytest.fixture(scope="module")
def metric(tmp_path_factory):
    return evaluate.load(str(METRIC_DIR), cache_dir=str(tmp_path_factory.mktemp("evaluate_cache")))


def assert_same_results(actual, expected):
    assert actual.keys() == expected.keys()
    for name in expected:
        assert actual[name] == pytest.approx(expected[name], nan_ok=True), name


def test_standard_recall_by_hand(metric):
    m = metric.compute(predictions=PREDICTIONS, references=REFERENCES, ks=(1, 5))
    # TR (image queries; a hit if ANY own caption is in the top K):
    #   image 0 ranks c0 .9, c2 .8, c1 .2, c3 .1     own {c0, c1}: first own at rank 1
    #   image 1 ranks c0 .7, c2 .6, c3 .25, c1 .1    own {c2}:     rank 2
    #   image 2 ranks c1 .5, c2 .4, c3 .3, c0 .2     own {c3}:     rank 3
    assert m["tr_r1"] == pytest.approx(100 / 3)
    assert m["tr_r5"] == pytest.approx(100.0)  # 4 captions < 5: every image is a hit
    # IR (caption queries over the columns; a hit if the own image is in the top K):
    #   c0 [.9 .7 .2]  own i0 -> rank 1;   c1 [.2 .1 .5] own i0 -> rank 2 (i2 .5 first)
    #   c2 [.8 .6 .4]  own i1 -> rank 2;   c3 [.1 .25 .3] own i2 -> rank 1
    assert m["ir_r1"] == pytest.approx(50.0)  # 2 / 4
    assert m["ir_r5"] == pytest.approx(100.0)
    # mean of the four recalls: (33.33 + 100 + 50 + 100) / 4
    assert m["r_mean"] == pytest.approx((100 / 3 + 250) / 4)
    assert m["tr_no_caption"] == 0
    assert set(m) == {"tr_r1", "tr_r5", "ir_r1", "ir_r5", "r_mean", "tr_no_caption"}  # no relevance -> no *_any


def test_default_ks(metric):
    m = metric.compute(predictions=PREDICTIONS, references=REFERENCES)
    assert {"tr_r1", "tr_r5", "tr_r10", "ir_r1", "ir_r5", "ir_r10"} <= set(m)
    # R@1 as above; R@5 = R@10 = 100 (at most 4 candidates): (33.33 + 100 + 100 + 50 + 100 + 100) / 6
    assert m["r_mean"] == pytest.approx((100 / 3 + 450) / 6)


def test_ties_rank_the_correct_item_after_the_wrong_one(metric):
    # Image 0 owns caption 0 and image 1 owns caption 1. Image 0 scores c0 and c1 both .5, so its own caption is
    # ranked 2nd (pessimistic): a TR miss at R@1. Caption 0's column [.5 .5] ties its own image 0 with image 1:
    # an IR miss too. Image 1 / caption 1 (.9, strictly first) are hits. So every R@1 is 1 / 2.
    m = metric.compute(predictions=[[0.5, 0.5], [0.5, 0.9]], references=[[0], [1]], ks=(1, 2))
    assert m["tr_r1"] == pytest.approx(50.0)
    assert m["ir_r1"] == pytest.approx(50.0)
    assert m["tr_r2"] == m["ir_r2"] == 100.0
    # a collapsed model (all scores equal) retrieves nothing at R@1, whatever the index order
    collapsed = metric.compute(predictions=[[0.3] * 3] * 3, references=[[0], [1], [2]], ks=(1, 3))
    assert collapsed["tr_r1"] == collapsed["ir_r1"] == 0.0
    assert collapsed["tr_r3"] == collapsed["ir_r3"] == 100.0


def test_relevance_any_and_map_at_r_by_hand(metric):
    m = metric.compute(predictions=PREDICTIONS, references=REFERENCES, relevance=RELEVANCE, ks=(1, 5))
    # TR with relevance (columns of RELEVANCE), R = number of relevant captions;
    # AP@R = (1/R) * sum of precision@r over the ranks r <= R that hold a relevant caption:
    #   image 0: relevant {c0, c1, c3}, R = 3; ranking c0 + , c2 - , c1 +   -> AP = (1/1 + 2/3) / 3 = 5/9
    #   image 1: relevant {c0, c2},     R = 2; ranking c0 + , c2 +          -> AP = (1/1 + 2/2) / 2 = 1
    #            (a hit at R@1-any although its own caption c2 is 2nd: the standard tr_r1 misses it)
    #   image 2: relevant {c3},         R = 1; ranking c1 -                 -> AP = 0, first relevant at rank 3
    assert m["tr_r1_any"] == pytest.approx(200 / 3)
    assert m["tr_r5_any"] == pytest.approx(100.0)
    assert m["tr_map_r"] == pytest.approx(100 * (5 / 9 + 1 + 0) / 3)  # 51.85
    # IR with relevance (rows of RELEVANCE):
    #   c0 [.9 .7 .2]:  relevant {i0, i1}, R = 2; ranking i0 + , i1 +   -> AP = 1,   first at rank 1
    #   c1 [.2 .1 .5]:  relevant {i0},     R = 1; ranking i2 -          -> AP = 0,   first at rank 2
    #   c2 [.8 .6 .4]:  relevant {i1},     R = 1; ranking i0 -          -> AP = 0,   first at rank 2
    #   c3 [.1 .25 .3]: relevant {i0, i2}, R = 2; ranking i2 + , i1 -   -> AP = 1/2, first at rank 1
    assert m["ir_r1_any"] == pytest.approx(50.0)
    assert m["ir_r5_any"] == pytest.approx(100.0)
    assert m["ir_map_r"] == pytest.approx(100 * (1 + 0 + 0 + 0.5) / 4)  # 37.5
    assert m["tr_no_relevant"] == m["ir_no_relevant"] == 0
    # the standard metrics are unchanged by relevance
    assert m["tr_r1"] == pytest.approx(100 / 3) and m["ir_r1"] == pytest.approx(50.0)


def test_image_without_caption_and_without_relevant_caption(metric):
    # 3 images x 2 captions: image 0 owns c0, image 1 owns c1, image 2 owns nothing (empty reference list).
    predictions = [[0.9, 0.1], [0.8, 0.3], [0.5, 0.6]]
    references = [[0], [1], []]
    m = metric.compute(predictions=predictions, references=references, ks=(1, 5))
    # TR: image 0 ranks c0 first (hit); image 1 ranks c0 .8 above its own c1 .3 (miss); image 2 is left out:
    # tr_r1 = 1 / 2, not 1 / 3.
    assert m["tr_r1"] == pytest.approx(50.0)
    assert m["tr_r5"] == pytest.approx(100.0)
    assert m["tr_no_caption"] == 1
    # IR: image 2 is still a candidate. c0 [.9 .8 .5] own i0 -> rank 1; c1 [.1 .3 .6] own i1 -> rank 2 (after i2).
    assert m["ir_r1"] == pytest.approx(50.0)

    # Relevance = the own pairs only: image 2's relevance column is all False -> no TR query for it.
    own_only = np.array([[1, 0, 0], [0, 1, 0]], dtype=bool)
    m = metric.compute(predictions=predictions, references=references, relevance=own_only, ks=(1,))
    assert m["tr_no_relevant"] == 1 and m["ir_no_relevant"] == 0
    assert m["tr_r1_any"] == pytest.approx(50.0)  # same two scored images as tr_r1
    # image 0: R = 1, c0 first -> AP 1; image 1: R = 1, c0 first -> AP 0
    assert m["tr_map_r"] == pytest.approx(50.0)

    # If c1 is also true of image 2, image 2 becomes a TR query (it ranks c1 .6 first: a hit), though it still has
    # no caption of its own for the standard protocol.
    c1_also_image_2 = np.array([[1, 0, 0], [0, 1, 1]], dtype=bool)
    m = metric.compute(predictions=predictions, references=references, relevance=c1_also_image_2, ks=(1,))
    assert m["tr_no_relevant"] == 0 and m["tr_no_caption"] == 1
    assert m["tr_r1_any"] == pytest.approx(200 / 3)  # images 0 and 2 hit, image 1 misses


def test_smallest_case_with_a_query_that_has_nothing_to_find(metric):
    # 2 images x 1 caption owned by image 0; image 1 has neither a caption nor a relevant one (its relevance
    # column is all False), so it is counted in tr_no_caption and tr_no_relevant and only image 0 is scored.
    m = metric.compute(predictions=[[0.2], [0.9]], references=[[0], []], relevance=[[True, False]], ks=(1,))
    assert m["tr_no_caption"] == 1 and m["tr_no_relevant"] == 1 and m["ir_no_relevant"] == 0
    assert m["tr_r1"] == m["tr_r1_any"] == m["tr_map_r"] == 100.0  # image 0's only candidate is its caption
    assert m["ir_r1"] == m["ir_r1_any"] == m["ir_map_r"] == 0.0  # caption 0 ranks image 1 (.9) above image 0 (.2)


def test_add_batch_equals_one_compute(metric):
    metric.add_batch(predictions=PREDICTIONS[:2], references=REFERENCES[:2])
    metric.add_batch(predictions=PREDICTIONS[2:], references=REFERENCES[2:])
    batched = metric.compute(relevance=RELEVANCE, ks=(1, 5))
    whole = metric.compute(predictions=PREDICTIONS, references=REFERENCES, relevance=RELEVANCE, ks=(1, 5))
    assert_same_results(batched, whole)
    assert batched["tr_map_r"] == pytest.approx(100 * (5 / 9 + 1) / 3)  # the hand-worked value above


@pytest.mark.parametrize("decimals", [None, 1], ids=["distinct", "many_ties"])
def test_agrees_with_retrieval_metrics_on_random_data(metric, decimals):
    rng = np.random.default_rng(0)
    n_images, n_captions = 20, 50
    similarity = rng.standard_normal((n_images, n_captions)).astype(np.float32)
    if decimals is not None:
        similarity = np.round(similarity, decimals).astype(np.float32)
    caption_to_image = rng.integers(0, n_images, n_captions)  # some images may own no caption
    relevance = rng.random((n_captions, n_images)) < 0.1
    relevance[np.arange(n_captions), caption_to_image] = True
    references = [np.flatnonzero(caption_to_image == image).tolist() for image in range(n_images)]

    m = metric.compute(predictions=similarity.tolist(), references=references, relevance=relevance, ks=(1, 5, 10))
    assert_same_results(m, retrieval_metrics(similarity, caption_to_image, relevance, ks=(1, 5, 10)))
    m = metric.compute(predictions=similarity.tolist(), references=references)
    assert_same_results(m, retrieval_metrics(similarity, caption_to_image))


@pytest.mark.parametrize(
    ("references", "match"),
    [
        ([[0, 1], [1], [2, 3]], r"caption 1 belongs to images \[0, 1\]"),  # claimed by two images
        ([[0, 1], [2], [3, 7]], r"references\[2\] holds caption index 7, outside \[0, 4\)"),
        ([[0, 1], [-1, 2], [3]], r"references\[1\] holds caption index -1, outside \[0, 4\)"),
        ([[0, 1], [2], []], r"caption 3 belongs to no image"),  # a caption nobody owns
    ],
    ids=["caption_in_two_images", "index_too_large", "negative_index", "caption_without_image"],
)
def test_bad_references_raise(metric, references, match):
    with pytest.raises(ValueError, match=match):
        metric.compute(predictions=PREDICTIONS, references=references)


def test_caption_listed_twice_by_its_own_image_is_accepted(metric):
    twice = metric.compute(predictions=PREDICTIONS, references=[[0, 1, 1], [2], [3]])
    assert_same_results(twice, metric.compute(predictions=PREDICTIONS, references=REFERENCES))


def test_ragged_rows_raise(metric):
    ragged = [PREDICTIONS[0], PREDICTIONS[1][:3], PREDICTIONS[2]]
    with pytest.raises(ValueError, match=r"predictions are ragged: row 0 scores 4 captions but row 1 scores 3"):
        metric.compute(predictions=ragged, references=REFERENCES)


def test_errors_of_the_implementation_pass_through(metric):
    # relevance must mark each caption's own image (checked by sisc_train.evaluation.retrieval_metrics)
    no_own = RELEVANCE.copy()
    no_own[2, 1] = False
    with pytest.raises(ValueError, match=r"relevance\[2, 1\] is False"):
        metric.compute(predictions=PREDICTIONS, references=REFERENCES, relevance=no_own)


def test_info_and_implementation(metric):
    assert "Cross-Modal Similarity Regulation" in metric.citation and "@inproceedings" in metric.citation
    assert "references" in metric.inputs_description and "tr_no_caption" in metric.inputs_description
    module = sys.modules[type(metric).__module__]
    # the wrapper calls the installed package's function (imported the usual way), not a copy
    assert module.retrieval_metrics is retrieval_metrics
    assert Path(implementation.__file__).resolve() == ROOT / "sisc_train" / "evaluation" / "retrieval_metrics.py"


def test_load_from_another_cwd_with_the_script_path(monkeypatch, tmp_path):
    monkeypatch.chdir(tmp_path)
    metric = evaluate.load(str(METRIC_DIR / "retrieval_recall.py"), cache_dir=str(tmp_path / "cache"))
    m = metric.compute(predictions=PREDICTIONS, references=REFERENCES, ks=(1,))
    assert m["tr_r1"] == pytest.approx(100 / 3) and m["ir_r1"] == pytest.approx(50.0)


def import_the_script(name: str):
    """Executes metrics/retrieval_recall/retrieval_recall.py as a new module (as evaluate does with its copy)."""
    spec = importlib.util.spec_from_file_location(name, METRIC_DIR / "retrieval_recall.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_without_sisc_installed_the_error_says_how_to_install_it(monkeypatch):
    # no sisc_train module imported, and `None` in sys.modules: importing it fails as if it were not installed
    for name in [name for name in sys.modules if name.split(".")[0] == "sisc_train"]:
        monkeypatch.delitem(sys.modules, name)
    monkeypatch.setitem(sys.modules, "sisc_train", None)
    expected = r"needs the SISC package .*pip install -e <repo>.*pip install git\+"
    with pytest.raises(ImportError, match=expected) as error:
        import_the_script("retrieval_recall_without_sisc")
    assert error.value.__cause__.name.startswith("sisc_train")


def test_a_missing_dependency_of_sisc_is_not_reported_as_sisc_missing(monkeypatch):
    monkeypatch.delitem(sys.modules, "sisc_train.evaluation.retrieval_metrics")
    monkeypatch.setitem(sys.modules, "torch", None)  # retrieval_metrics imports torch
    with pytest.raises(ImportError) as error:
        import_the_script("retrieval_recall_without_torch")
    assert error.value.name == "torch" and "SISC" not in str(error.value)


def test_fresh_process_from_another_cwd(tmp_path):
    """A fresh interpreter, another cwd and an empty modules cache: evaluate imports its cached copy of the script,
    which imports the installed sisc_train (the environment is the tests' own: SISC installed, this checkout first)."""
    script = textwrap.dedent(
        """
        import json, sys
        import evaluate

        root = sys.argv[1]
        loaded = []
        for path in ("metrics/retrieval_recall", "metrics/retrieval_recall/retrieval_recall.py"):
            metric = evaluate.load(root + "/" + path)
            module = sys.modules[type(metric).__module__]
            result = metric.compute(
                predictions=[[0.9, 0.1], [0.8, 0.3], [0.5, 0.6]], references=[[0], [1], []], ks=(1,)
            )
            implementation = sys.modules["sisc_train.evaluation.retrieval_metrics"]
            assert module.retrieval_metrics is implementation.retrieval_metrics
            loaded.append({"script": module.__file__, "implementation": implementation.__file__, **result})
        print(json.dumps(loaded))
        """
    )
    env = dict(os.environ)
    env |= {"HF_MODULES_CACHE": str(tmp_path / "modules"), "HF_HUB_OFFLINE": "1", "HF_EVALUATE_OFFLINE": "1"}
    env["HF_HOME"] = str(tmp_path / "hf_home")  # the evaluate data cache too
    done = subprocess.run(
        [sys.executable, "-c", script, str(ROOT)],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    report = json.loads(done.stdout.strip().splitlines()[-1])
    assert len(report) == 2
    for loaded in report:
        assert Path(loaded["script"]).is_relative_to(tmp_path / "modules")  # the cached copy was imported
        assert Path(loaded["implementation"]).resolve() == Path(implementation.__file__).resolve()
        assert loaded["tr_r1"] == 50.0 and loaded["tr_no_caption"] == 1 and loaded["ir_r1"] == 50.0
