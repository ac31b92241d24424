"""Zero-shot image-text retrieval of a SISC model: batched encoding (once per item, inference mode) and metrics."""

from __future__ import annotations

import torch
from tqdm.auto import tqdm

from train.retrieval_metrics import retrieval_metrics


@torch.inference_mode()
def encode_images(model, processor, images, batch_size: int = 128, device=None, desc: str = "encode images"):
    """L2-normalised embeddings (n, embed_dim) of a list of PIL images, in batches."""
    device = device or model.device
    chunks = []
    for start in tqdm(range(0, len(images), batch_size), desc=desc, leave=False, disable=len(images) <= batch_size):
        pixels = processor(images=images[start : start + batch_size], return_tensors="pt")["pixel_values"]
        chunks.append(model.get_image_features(pixels.to(device)).float().cpu())
    return torch.cat(chunks) if chunks else torch.empty(0, model.config.embed_dim)


@torch.inference_mode()
def encode_texts(model, processor, texts, batch_size: int = 256, device=None, desc: str = "encode texts"):
    """L2-normalised embeddings (n, embed_dim) of a list of captions, in batches."""
    device = device or model.device
    chunks = []
    for start in tqdm(range(0, len(texts), batch_size), desc=desc, leave=False, disable=len(texts) <= batch_size):
        tokens = processor(text=texts[start : start + batch_size], return_tensors="pt", padding=True, truncation=True)
        chunks.append(
            model.get_text_features(tokens["input_ids"].to(device), tokens["attention_mask"].to(device)).float().cpu()
        )
    return torch.cat(chunks) if chunks else torch.empty(0, model.config.embed_dim)


def evaluate_retrieval(model, processor, images, captions, caption_to_image, relevance=None, batch_size=128, accelerator=None):
    """Zero-shot TR/IR metrics (ITC similarity ranking). With an Accelerator, each process encodes a shard."""
    was_training = model.training
    model.eval()
    if accelerator is not None and accelerator.num_processes > 1:
        from accelerate.utils import gather_object

        rank, world = accelerator.process_index, accelerator.num_processes
        image_embeds = torch.cat(gather_object([encode_images(model, processor, images[rank::world], batch_size)]))
        text_embeds = torch.cat(gather_object([encode_texts(model, processor, captions[rank::world], batch_size)]))
        # undo the strided sharding
        image_embeds = _unstride(image_embeds, len(images), world)
        text_embeds = _unstride(text_embeds, len(captions), world)
    else:
        image_embeds = encode_images(model, processor, images, batch_size)
        text_embeds = encode_texts(model, processor, captions, batch_size)
    model.train(was_training)
    similarity = image_embeds @ text_embeds.t()
    return retrieval_metrics(similarity, caption_to_image, relevance)


def _unstride(gathered: torch.Tensor, n: int, world: int) -> torch.Tensor:
    out = torch.empty_like(gathered)
    offset = 0
    for rank in range(world):
        count = len(range(rank, n, world))
        out[rank::world] = gathered[offset : offset + count]
        offset += count
    return out


def evaluate_shapes_split(model, processor, split, accelerator=None, batch_size: int = 128) -> dict[str, float]:
    """Zero-shot retrieval metrics on a split of the embedded shapes dataset (ground-truth relevance included)."""
    from train.shapes_dataset import retrieval_view

    images, captions, caption_to_image, relevance = retrieval_view(split)
    return evaluate_retrieval(model, processor, images, captions, caption_to_image, relevance, batch_size, accelerator)
