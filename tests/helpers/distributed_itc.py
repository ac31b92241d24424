"""Worker for tests/test_distributed.py: the global-batch regulated ITC loss and its gradients under DDP.

Run with torchrun (N processes, gloo) or as a plain process (1 process, whole batch). Every process builds the
same model (same seed), takes its contiguous shard of the same global batch, computes the loss and backward
through DistributedDataParallel, and rank 0 saves the loss and the parameter gradients to argv[1].
"""

import datetime
import os
import sys

import torch
import torch.distributed as dist

from configuration_sisc import SiscConfig
from modeling_sisc import SiscModel


def main(out_path: str, norm: str) -> None:
    import faulthandler

    faulthandler.dump_traceback_later(60, exit=True)  # a hung worker prints where it hangs, then exits
    distributed = "RANK" in os.environ
    if distributed:
        dist.init_process_group("gloo", timeout=datetime.timedelta(seconds=60))
    rank = dist.get_rank() if distributed else 0
    world = dist.get_world_size() if distributed else 1

    torch.manual_seed(0)
    config = SiscConfig.small(vocab_size=50, image_size=16, hidden_size=32, embed_dim=16, weight_norm=norm)
    for sub in (config.vision_config, config.text_config, config.fusion_encoder_config):
        sub.hidden_dropout_prob = sub.attention_probs_dropout_prob = 0.0
    config.vision_config.patch_size = 8
    model = SiscModel(config)

    g = torch.Generator().manual_seed(1)
    n = 8
    pixel_values = torch.randn(n, 3, 16, 16, generator=g)
    input_ids = torch.randint(5, 50, (n, 7), generator=g)
    attention_mask = torch.ones_like(input_ids)
    attention_mask[::3, 5:] = 0
    image_ids = torch.tensor([0, 0, 1, 2, 3, 3, 4, 5])
    teacher_image = torch.randn(n, 16, generator=g)
    teacher_text = torch.randn(n, 16, generator=g)

    shard = slice(rank * n // world, (rank + 1) * n // world)
    if distributed:
        # the ITC-only forward leaves the fusion encoder and ITM head unused
        model = torch.nn.parallel.DistributedDataParallel(model, find_unused_parameters=True)
    out = model(
        input_ids=input_ids[shard],
        pixel_values=pixel_values[shard],
        attention_mask=attention_mask[shard],
        return_loss=True,
        image_ids=image_ids[shard],
        teacher_image_embeds=teacher_image[shard],
        teacher_text_embeds=teacher_text[shard],
        alpha=0.3,
    )
    out.loss.backward()
    module = model.module if distributed else model
    if rank == 0:
        grads = {name: p.grad.clone() for name, p in module.named_parameters() if p.grad is not None}
        torch.save({"loss": out.loss.detach(), "weights_t2i": out.weights_t2i, "grads": grads, "world": world}, out_path)
    if distributed:
        dist.barrier()
        dist.destroy_process_group()
        # Tearing down DDP/gloo objects at interpreter exit sometimes hung one worker here (torch 2.13, CPU);
        # everything is saved, so leave without running destructors.
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(0)


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2] if len(sys.argv) > 2 else "mean")
