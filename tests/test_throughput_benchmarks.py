"""The speed and scale benchmarks (benchmarks/throughput.py, loss_scale.py, eval_speed.py --scale) run end to end at
toy size and count what they claim to count. No timing is asserted: machines are noisy."""

import json
import os
import sys

import pytest
import torch

sys.path.insert(0, os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "benchmarks"))

import eval_speed  # noqa: E402
import loss_scale  # noqa: E402
import throughput  # noqa: E402
from train_speed import PeakMemory  # noqa: E402

from configuration_sisc import SiscConfig  # noqa: E402


def fusion_flops_by_hand(config: SiscConfig, text_tokens: int) -> int:
    """Matmul FLOPs (2 per multiply-add) of one image-text pair through the fusion encoder and the ITM head."""
    fusion, vision = config.fusion_encoder_config, config.vision_config
    hidden, inner, layers = fusion.hidden_size, fusion.intermediate_size, fusion.num_hidden_layers
    image_tokens = (vision.image_size // vision.patch_size) ** 2 + 1
    L, T = text_tokens, image_tokens
    per_layer = (
        4 * 2 * L * hidden * hidden  # self-attention q, k, v, o
        + 2 * 2 * L * L * hidden  # self-attention scores and weighted sum
        + 2 * 2 * L * hidden * hidden  # cross-attention q, o
        + 2 * 2 * T * vision.hidden_size * hidden  # cross-attention k, v over the image tokens
        + 2 * 2 * L * T * hidden  # cross-attention scores and weighted sum
        + 2 * 2 * L * hidden * inner  # feed-forward
    )
    projection = 0 if vision.hidden_size == hidden else 2 * T * vision.hidden_size * hidden
    return layers * per_layer + projection + 2 * hidden * 2  # ITM head on [CLS]


@pytest.mark.parametrize("config", [SiscConfig.small(vocab_size=50, image_size=32, hidden_size=32),
                                    SiscConfig.base(image_size=64)], ids=["small", "base"])
def test_fused_pair_flops_match_a_hand_count(config):
    assert eval_speed.fused_pair_flops(config, text_length=7) == fusion_flops_by_hand(config, 7)


def test_fused_pairs_counts_both_directions_and_caps_k():
    assert eval_speed.fused_pairs(5000, 25000, 256) == 5000 * 256 + 25000 * 256
    assert eval_speed.fused_pairs(3, 15, 8) == 3 * 8 + 15 * 3  # a caption has only 3 images to re-rank


def test_eval_scale_runs_and_projects_what_it_skips(tmp_path, capsys):
    out = tmp_path / "scale.json"
    study = eval_speed.main(["--scale", "3", "6", "--rerank_k", "2", "8", "--max_pairs", "100", "--rounds", "1",
                             "--output", str(out)])
    ran = {(run["n_images"], run["k"]) for run in study["runs"]}
    assert ran == {(3, 0), (3, 2), (3, 8), (6, 0), (6, 2)}  # (6, 8): 6 * 8 + 30 * 6 = 228 pairs > 100
    assert all(run["n_captions"] == 5 * run["n_images"] for run in study["runs"])
    assert study["coco_5k_projection"][8]["fused_pairs"] == 30000 * 8
    assert study["rerank_seconds_per_fused_pair"] > 0
    assert "projected, not run" in capsys.readouterr().out
    assert json.loads(out.read_text())["fused_pair_flops_text30"]["base"] > 0


def test_loss_scale_runs_every_variant(tmp_path):
    results = loss_scale.main(["--sizes", "8", "32", "--rounds", "1", "--warmup", "0", "--output", str(tmp_path / "l.json")])
    assert set(results["by_n"]) == {"8", "32"}
    for row in results["by_n"].values():
        assert set(row) == set(loss_scale.VARIANTS)
        assert row["infonce"]["time_over_infonce"] == 1.0


def test_loss_bench_srcl_with_equal_similarities_is_infonce():
    """With every cosine equal the mean-normalised weights are all 1: the regulated loss is InfoNCE's."""
    model = loss_scale.SiscModel(SiscConfig.small(vocab_size=16, hidden_size=16, image_size=16))
    bench = loss_scale.LossBench(model, 6, torch.device("cpu"), alpha=0.5)
    bench.image = bench.text = torch.nn.functional.normalize(torch.ones(6, loss_scale.EMBED_DIM), dim=-1)
    assert bench.run("srcl") == pytest.approx(bench.run("infonce"), rel=1e-6)


def test_throughput_step_and_profile(tmp_path, capsys):
    out = tmp_path / "t.json"
    results = throughput.main(["--sections", "peak", "step", "profile", "--variants", "fp32", "bf16", "eager", "grad_ckpt",
                               "--batch_size", "4", "--seq_len", "8", "--image_size", "32", "--rounds", "1", "--warmup", "0",
                               "--peak_size", "64", "--profile_steps", "1", "--output", str(out)])
    steps = results["step"]
    assert set(steps) == {"fp32", "bf16", "eager", "grad_ckpt"}
    # gradient checkpointing recomputes the forward: more FLOPs, fewer saved tensors
    assert steps["grad_ckpt"]["flops"] > steps["fp32"]["flops"] > 0
    assert steps["grad_ckpt"]["memory"]["saved_for_backward_bytes"] < steps["fp32"]["memory"]["saved_for_backward_bytes"]
    parts = results["forward_flops_by_part"]
    assert parts["sisc.vision_model"] > 0 and parts["sisc.fusion_model"] > 0
    # the backward of every matmul costs two more: the step is about 3x its forward
    assert 2.5 * parts["total"] < steps["fp32"]["flops"] < 3.5 * parts["total"]
    assert set(results["matmul_peak_flops"]) == {"float32", "bfloat16"}
    assert sum(results["profile"]["time_by_kind_share"].values()) == pytest.approx(1.0)
    assert json.loads(out.read_text())["model"]["parameters"] > 0
    assert "counted FLOPs per step" in capsys.readouterr().out


def test_throughput_trainer_against_raw_step(tmp_path):
    trainer_args = (f"--image_size 16 --hidden_size 32 --shapes_num_train 64 --data_cache_dir {tmp_path / 'cache'} "
                    "--logging_steps 1")
    results = throughput.main(["--sections", "trainer", "--batch_size", "8", "--trainer_steps", "4", "--trainer_warmup", "1",
                               "--trainer_rounds", "1", "--trainer_workers", "0", "--trainer_args", trainer_args,
                               "--output", str(tmp_path / "t.json")])
    trainer = results["trainer"]
    assert set(trainer["runs"]) == {"trainer_0_workers", "raw_step"}
    assert trainer["trainer_over_raw"]["trainer_0_workers"] > 0
    assert trainer["goal_met"] is None  # the main job's setting (2 workers) was not run


def test_op_kinds():
    assert throughput.op_kind("aten::addmm") == "matmul"
    assert throughput.op_kind("aten::_scaled_dot_product_flash_attention_for_cpu") == "attention"
    assert throughput.op_kind("aten::bernoulli_") == "dropout / random"
    assert throughput.op_kind("aten::native_layer_norm") == "normalisation"


@pytest.mark.skipif(not os.path.exists("/proc/self/statm"), reason="the CPU peak is read from /proc")
def test_peak_memory_sees_a_large_tensor():
    with PeakMemory(torch.device("cpu")) as peak:
        block = torch.ones(64, 2**20)  # 256 MiB, mmapped and given back when freed
        del block
    assert peak.peak_bytes >= 200 * 2**20


def test_joint_step_benchmark_runs_every_variant_and_the_shared_fusion_keeps_the_losses(tmp_path):
    import joint_step

    out = tmp_path / "joint.json"
    results = joint_step.main(["--batch_size", "32", "--batches", "1", "--rounds", "1", "--warmup", "0",
                               "--shapes_num_train", "64", "--image_size", "32", "--hidden_size", "32",
                               "--data_cache_dir", str(tmp_path / "cache"), "--output", str(out)])
    assert set(results["variants"]) == set(joint_step.VARIANTS)
    assert results["shared_vs_one_pass_loss_difference"] < 1e-4
    assert json.loads(out.read_text())["variants"]["before"]["ratio_to_before"] == 1.0
    assert joint_step.SiscFusionEncoder.forward is joint_step.SHARED_FUSION  # restored
