"""How a new model starts, the same for every trainer (pretraining, retrieval fine-tuning, VQA, NLVR): a preset or
config file (`--model_config small|base|FILE`), pretrained encoders (`--vision_model_name_or_path`,
`--text_model_name_or_path` split by `--num_text_layers`), the tokenizer (`--tokenizer_name_or_path`) and the image
settings (`--image_size`).

    accelerate launch train/pretrain.py --model_config base \\
        --vision_model_name_or_path google/vit-base-patch16-224-in21k --text_model_name_or_path bert-base-uncased

The tokenizer defaults to the text model's (the shipped toy vocabulary without one); the image size to the vision
model's own (else the preset's: small 64, base 256), its normalisation to the vision model's image processor. The
config's special token ids and vocabulary size come from the tokenizer. With encoders, the encoders set the towers'
sizes and the preset (or FILE) the rest (embedding size, temperature, ...); a tower without an encoder starts from
the preset's random weights.

This module lives in `tasks/`, the top layer, because only the trainers start models: the loop receives a built
model through `Task.build_model`, and data, evaluation and publishing never need to know where a model came from. It
imports only the root model files.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field

from configuration_sisc import SiscConfig
from modeling_sisc import SiscPreTrainedModel, vision_encoder_config
from processing_sisc import SiscProcessor, special_token_ids

PRESETS = ("small", "base")
SMALL_IMAGE_SIZE, SMALL_HIDDEN_SIZE = 64, 128


@dataclass
class EncoderArguments:
    model_config: str | None = field(
        default=None,
        metadata={"help": "The new model: 'small' (default: the toy model that trains on a CPU in minutes), 'base' (the "
                          "paper's: ViT-B/16 at 256 px, 6 + 6 BERT-base layers, 256-d embeddings, ~210M parameters) or a "
                          "SiscConfig JSON file. With encoders, they set the towers' sizes and this the rest."},
    )
    vision_model_name_or_path: str | None = field(
        default=None,
        metadata={"help": "Start the image encoder from this ViT, DeiT, CLIP(-vision) or SigLIP(-vision) checkpoint "
                          "(folder or Hub id; of a full CLIP / SigLIP its vision tower)."},
    )
    text_model_name_or_path: str | None = field(
        default=None,
        metadata={"help": "Start the text and fusion encoders from this BERT-family checkpoint (folder or Hub id): its "
                          "first --num_text_layers layers become the text encoder, the rest the fusion encoder; its MLM "
                          "head is reused when it has one."},
    )
    tokenizer_name_or_path: str | None = field(
        default=None,
        metadata={"help": "Tokenizer (folder or Hub id); default: the text model's, else the shipped toy vocabulary."},
    )
    num_text_layers: int | None = field(
        default=None, metadata={"help": "Layers of the text model that form the text encoder (default: half)."}
    )
    image_size: int | None = field(
        default=None,
        metadata={"help": "Image size of a new model (default: the vision model's own, else small 64 / base 256); a "
                          "pretrained tower's position embeddings are interpolated to it."},
    )
    hidden_size: int | None = field(
        default=None, metadata={"help": "Width of the small model's random towers (default 128)."}
    )
    max_length: int = field(default=32, metadata={"help": "Maximum caption length in tokens of a new model."})
    vision_conv_stem: list[int] | None = field(
        default=None,
        metadata={"help": "A new model's convolutional stem in place of the ViT's patch projection: channels per 3x3 "
                          "conv + ReLU + 2x2 max-pool stage, e.g. 16 32 64 for patch 8 (SiscConfig.vision_conv_stem; "
                          "the small model's default), 0 for the plain patch projection."},
    )
    image_pooling: str | None = field(
        default=None,
        metadata={"help": "A new model's image embedding: 'cls' ([CLS] state, ALBEF; the default of the base model and "
                          "of pretrained towers) or 'max' (maximum over the patch states; the small model's default; "
                          "SiscConfig.image_pooling)."},
    )
    text_dropout: float | None = field(
        default=None,
        metadata={"help": "A new model's dropout in the text and fusion encoders (hidden states and attention "
                          "probabilities; default: the BERT checkpoint's or the preset's, 0.1). The main job uses 0."},
    )


# what a resumed run must share with the run that wrote its checkpoint
ENCODER_SETTINGS = (
    "model_config", "vision_model_name_or_path", "text_model_name_or_path", "tokenizer_name_or_path",
    "num_text_layers", "image_size", "hidden_size", "max_length",
)
# a new model's image tower options (recorded for a resume only when given: runs from before them still resume)
IMAGE_TOWER_FLAGS = ("vision_conv_stem", "image_pooling")
# the flags that say where a new model starts (they cannot go with a SISC checkpoint)
START_FLAGS = ("model_config", "vision_model_name_or_path", "text_model_name_or_path", "tokenizer_name_or_path",
               "num_text_layers", "text_dropout", *IMAGE_TOWER_FLAGS)


def starts_new_model(encoder_args: EncoderArguments | None) -> bool:
    """Whether any flag asks for a new model (a preset, encoders or a tokenizer)."""
    return encoder_args is not None and any(getattr(encoder_args, name) is not None for name in START_FLAGS)


def check_start(model_name_or_path: str | None, encoder_args: EncoderArguments) -> None:
    """ValueError for combinations that cannot be meant together."""
    given = [f"--{name}" for name in START_FLAGS if getattr(encoder_args, name) is not None]
    if model_name_or_path and given:
        raise ValueError(
            f"--model_name_or_path {model_name_or_path} (a SISC checkpoint, which has its encoders, tokenizer and "
            f"config) cannot go with {', '.join(given)}: give either the checkpoint or the new model's parts"
        )
    if encoder_args.num_text_layers is not None and not encoder_args.text_model_name_or_path:
        raise ValueError("--num_text_layers splits a pretrained text model: give --text_model_name_or_path too")
    kind = encoder_args.model_config or "small"
    if encoder_args.hidden_size is not None and kind != "small":
        raise ValueError(f"--hidden_size sets the small model's width; --model_config {kind} has its own")
    if encoder_args.max_length < 2:
        raise ValueError(f"--max_length must be at least 2 ([CLS] and [SEP]), got {encoder_args.max_length}")


def preset(encoder_args: EncoderArguments) -> SiscConfig | None:
    """The SiscConfig of a FILE given as --model_config, None for a named preset."""
    kind = encoder_args.model_config or "small"
    if kind in PRESETS:
        return None
    try:
        with open(kind, encoding="utf-8") as handle:
            values = json.load(handle)
    except FileNotFoundError as error:
        raise ValueError(f"--model_config {kind!r} is neither {' nor '.join(PRESETS)} nor an existing SiscConfig JSON "
                         "file") from error
    except json.JSONDecodeError as error:
        raise ValueError(f"--model_config {kind}: not a JSON file ({error})") from error
    if not isinstance(values, dict):
        raise ValueError(f"--model_config {kind}: a SiscConfig JSON holds an object, not {type(values).__name__}")
    try:
        return SiscConfig.from_dict(values)
    except (TypeError, ValueError) as error:
        raise ValueError(f"--model_config {kind}: {error}") from error


def resolve_image_size(encoder_args: EncoderArguments) -> int:
    """--image_size, else the vision model's own, else the preset's / FILE's."""
    if encoder_args.image_size is not None:
        return encoder_args.image_size
    if encoder_args.vision_model_name_or_path:
        size = vision_encoder_config(encoder_args.vision_model_name_or_path).image_size
    elif (encoder_args.model_config or "small") == "small":
        size = SMALL_IMAGE_SIZE
    elif encoder_args.model_config == "base":
        size = SiscConfig.base().vision_config.image_size
    else:
        size = preset(encoder_args).vision_config.image_size
    return size if isinstance(size, int) else size[0]


def build_processor(encoder_args: EncoderArguments) -> SiscProcessor:
    """The processor of the new model: its tokenizer and image settings, saved with every checkpoint. Records the
    image size it resolved in `encoder_args` (results.json and a resume see the value used)."""
    encoder_args.image_size = resolve_image_size(encoder_args)
    tokenizer = encoder_args.tokenizer_name_or_path or encoder_args.text_model_name_or_path
    processor = SiscProcessor.from_pretrained_encoders(
        tokenizer, encoder_args.vision_model_name_or_path, image_size=encoder_args.image_size,
        max_length=encoder_args.max_length,
    )
    new_model_config(encoder_args, processor.tokenizer)  # a bad split or size fails here, before the data is read
    return processor


def new_model_config(encoder_args: EncoderArguments, tokenizer, **config_kwargs) -> tuple[SiscConfig, dict]:
    """(the new model's SiscConfig, the arguments of `from_pretrained_encoders` that give it): the preset / FILE, the
    encoders' configs and the tokenizer (special token ids, vocabulary size), `config_kwargs` on top. Reads configs
    only, so a bad split or size fails before any data or weights are loaded."""
    ids = special_token_ids(tokenizer, "the tokenizer")
    pad_token_id = ids.pop("pad_token_id")
    for name in IMAGE_TOWER_FLAGS:
        if getattr(encoder_args, name) is not None:
            config_kwargs.setdefault(name, getattr(encoder_args, name))
    if config_kwargs.get("vision_conv_stem") == [0]:  # --vision_conv_stem 0: the plain linear patch projection
        config_kwargs["vision_conv_stem"] = None
    if encoder_args.vision_model_name_or_path:  # the small preset's stem, read-out and word head are for its random tower
        config_kwargs.setdefault("vision_conv_stem", None)
        config_kwargs.setdefault("image_pooling", "cls")
        config_kwargs.setdefault("word_prediction_loss_weight", 0.0)
    kind = encoder_args.model_config or "small"
    image_size = encoder_args.image_size if encoder_args.image_size is not None else resolve_image_size(encoder_args)
    if kind == "small":
        encoder_args.hidden_size = encoder_args.hidden_size or SMALL_HIDDEN_SIZE
        base = SiscConfig.small(vocab_size=len(tokenizer), image_size=image_size, hidden_size=encoder_args.hidden_size,
                                pad_token_id=pad_token_id, **ids, **config_kwargs)
    elif kind == "base":
        base = SiscConfig.base(vocab_size=len(tokenizer), image_size=image_size, pad_token_id=pad_token_id, **ids,
                               **config_kwargs)
    else:
        base = preset(encoder_args)
    start = dict(config=base, image_size=image_size, vocab_size=len(tokenizer), pad_token_id=pad_token_id, **ids,
                 **config_kwargs)
    if encoder_args.text_dropout is not None:
        start["text_dropout"] = encoder_args.text_dropout
    config = SiscPreTrainedModel.config_from_encoders(
        encoder_args.vision_model_name_or_path, encoder_args.text_model_name_or_path, encoder_args.num_text_layers,
        **start,
    )
    positions = config.text_config.max_position_embeddings
    if encoder_args.max_length > positions:
        raise ValueError(f"--max_length {encoder_args.max_length} exceeds the {positions} positions of the text encoder")
    return config, start


def build_new_model(model_class, encoder_args: EncoderArguments, tokenizer, **config_kwargs):
    """A `model_class` (SiscForPreTraining, SiscForQuestionAnswering, ...) from the preset / FILE, the encoders and
    the tokenizer (special token ids, vocabulary size); `config_kwargs` (loss settings, task fields) on top."""
    config, start = new_model_config(encoder_args, tokenizer, **config_kwargs)
    if encoder_args.vision_model_name_or_path or encoder_args.text_model_name_or_path:
        return model_class.from_pretrained_encoders(
            encoder_args.vision_model_name_or_path, encoder_args.text_model_name_or_path, encoder_args.num_text_layers,
            **start,
        )
    return model_class(config)


def base_model_names(model_name_or_path: str | None, encoder_args: EncoderArguments | None) -> str | None:
    """What a model card names as the base model: the SISC checkpoint, or the encoders a new model started from."""
    if model_name_or_path or encoder_args is None:
        return model_name_or_path
    names = [encoder_args.vision_model_name_or_path, encoder_args.text_model_name_or_path]
    return ", ".join(name for name in names if name) or None
