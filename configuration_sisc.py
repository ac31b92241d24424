"""Configuration of SISC: an ALBEF-style vision-language model trained with similarity-regulated
contrastive learning (SRCL, Jiang et al., ACL 2023).

The config holds three sub-configs (image encoder, unimodal text encoder, fusion encoder) and every
setting of the regulated contrastive loss. Defaults follow the paper's base architecture
(ViT-B/16 at 256 px, 6 + 6 BERT-base layers, 256-d embeddings), which `SiscConfig.base()` spells out;
`SiscConfig.small()` gives the tiny model the scripts and tests train on a CPU.
"""

from __future__ import annotations

import math

from transformers import AutoConfig, BertConfig, PreTrainedConfig
from transformers.configuration_utils import SubConfigSpec

CONTRASTIVE_LOSSES = ("srcl", "infonce", "soft_infonce", "debiased", "hard_negatives", "siglip", "multi_positive")
# objectives that are a softmax over weighted negatives: soft targets (label smoothing, momentum distillation) apply
SOFTMAX_LOSSES = ("srcl", "infonce", "soft_infonce", "multi_positive")
WEIGHT_NORMS = ("mean", "softmax")
ALPHA_SCHEDULES = ("linear", "cosine", "constant")
# Image towers whose outputs are patch tokens (+ a summary: see modeling_sisc.image_summary).
VISION_MODEL_TYPES = ("vit", "deit", "clip_vision_model", "siglip_vision_model")
# Dual encoders whose vision tower can be taken (their `vision_config`).
DUAL_ENCODER_TYPES = ("clip", "siglip")
VQA_HEADS = ("generate", "classify")
# How the image tower's states become the image's summary vector (the contrastive embedding's input).
IMAGE_POOLINGS = ("cls", "max")
# Vision towers whose patch projection a convolutional stem can replace (`vision_conv_stem`).
CONV_STEM_MODEL_TYPES = ("vit", "deit")
# Sizes of each sub-config that must be positive integers (zero or negative ones fail deep inside torch otherwise).
_ENCODER_SIZES = ("hidden_size", "num_hidden_layers", "num_attention_heads", "intermediate_size")
SUB_CONFIG_SIZES = {
    "vision_config": (*_ENCODER_SIZES, "image_size", "patch_size", "num_channels"),
    "text_config": (*_ENCODER_SIZES, "vocab_size", "max_position_embeddings"),
    "fusion_encoder_config": (*_ENCODER_SIZES, "vocab_size", "max_position_embeddings"),
}


class SiscConfig(PreTrainedConfig):
    r"""
    Args:
        vision_config (`dict` or `PreTrainedConfig`, *optional*):
            Image encoder config: a `ViTConfig` (default), `DeiTConfig`, `CLIPVisionConfig` or `SiglipVisionConfig`.
        text_config (`dict` or `BertConfig`, *optional*):
            Unimodal text encoder (the paper: the first 6 layers of BERT-base).
        fusion_encoder_config (`dict` or `BertConfig`, *optional*):
            Fusion encoder: bidirectional BERT layers with cross-attention to the image patches (the paper:
            the last 6 layers of BERT-base plus new cross-attention). Its `hidden_size` must equal the text
            encoder's. (Not called `fusion_config`: transformers reserves that name for kernel fusion.)
        embed_dim (`int`, defaults to 256):
            Size of the shared, L2-normalised image/text embedding space.
        vision_conv_stem (`list[int]`, *optional*):
            Channels of a convolutional stem that replaces the ViT's patch projection (a "hybrid" ViT, as in the ViT
            paper and Xiao et al. 2021, "Early convolutions help transformers see better"): one 3x3 convolution +
            ReLU + 2x2 max-pooling stage per entry, then a 1x1 convolution to the tower's width. Needs
            `vision_config.patch_size == 2 ** len(vision_conv_stem)` (one token per patch, as before) and a ViT /
            DeiT tower trained from scratch. `None` (default): the plain linear patch projection.
        image_pooling (`str`, defaults to `"cls"`):
            The image's summary vector, from which the contrastive embedding is projected: `"cls"` = the [CLS] state
            (ALBEF; the pooler output where the tower has one), `"max"` = the maximum of each feature over the patch
            states (a presence detector: "is there a star anywhere", which a [CLS] average of one to three objects of
            different sizes dilutes; see `benchmarks/README.md`, "Why the main job's image tower does not see shapes").
        temperature_init (`float`, defaults to 0.07):
            Initial contrastive temperature; it is learned and kept within [0.001, 0.5] (as ALBEF does).
        contrastive_loss (`str`, defaults to `"srcl"`):
            `"srcl"`: negatives weighted by cross-modal similarity; `"infonce"`: plain CLIP/ALBEF ITC. The peer
            objectives of the false-negative benchmark (formulas in `modeling_sisc`, each from its paper):
            `"soft_infonce"` (Li et al., 2023: negatives weighted by a linear function of their softmax similarity,
            clipped from below), `"debiased"` (Chuang et al., 2020: the negatives' term corrected by the class prior
            `debiased_prior`), `"hard_negatives"` (Robinson et al., 2021: the debiased term with the negatives
            re-weighted by `exp(hard_negative_beta * logit)`, the hardest up), `"siglip"` (Zhai et al., 2023: a sigmoid
            loss per pair with a learned bias) and `"multi_positive"` (pairs that share an image or a caption text are
            all positives, with equal target mass).
        weight_norm (`str`, defaults to `"mean"`):
            How `1 / s_ij` becomes a weight with mean 1 over each anchor's negatives: `"mean"` divides by the
            mean (delta cancels), `"softmax"` takes (N - 1) * softmax(delta / s_ij) (delta is a sharpness).
        delta (`float`, defaults to 8.0):
            The paper's scaling factor in `w_ij = Norm(delta / s_ij)`; must be > 0. It only matters with the softmax
            normalisation, where 8 measured best (`benchmarks/false_negatives.py`, see `benchmarks/README.md`).
        removal_threshold (`float`, *optional*):
            The paper's sec. 4.3 heuristic ("ALBEF++"): negatives whose normalised weight is below it are dropped
            (weight 0), all others keep weight 1.
        alpha_start, alpha_end (`float`, default 1.0 and 0.0):
            Share of the frozen teacher's similarity in the mixed similarity at the first / last scheduled step.
        alpha_steps (`int`, defaults to 10000):
            Number of optimisation steps over which alpha moves from `alpha_start` to `alpha_end`.
        alpha_schedule (`str`, defaults to `"linear"`):
            Shape of the alpha schedule: `"linear"`, `"cosine"` or `"constant"` (stays at `alpha_start`).
        label_smoothing (`float`, defaults to 0.0):
            Share of each anchor's target mass spread evenly over all its candidates (as `torch`'s cross-entropy does),
            for the softmax objectives (`"srcl"`, `"infonce"`, `"soft_infonce"`, `"multi_positive"`).
        soft_infonce_alpha, soft_infonce_temperature, soft_infonce_min_weight (`float`, defaults 1.0, 0.07, 0.1):
            Soft-InfoNCE's weights `w_ij = max((1 - alpha * q_ij) / (1 - alpha / K), min_weight)`, with `q_ij` the
            softmax over the anchor's K negatives of the (teacher-mixed) cosine similarity / temperature. alpha is the
            paper's alpha / beta (only their ratio matters); 0 gives InfoNCE.
        debiased_prior (`float`, defaults to 0.1):
            The class prior tau+ of `"debiased"` and `"hard_negatives"`: the expected share of an anchor's negatives that
            match it; 0 gives InfoNCE (`"debiased"`) or pure hard-negative weighting (`"hard_negatives"`).
        hard_negative_beta (`float`, defaults to 1.0):
            Concentration beta of `"hard_negatives"`: negatives are re-weighted by `exp(beta * logit)` (mean 1 per anchor).
        siglip_bias_init (`float`, defaults to -10.0):
            Initial value of the learned bias of `"siglip"` (SigLIP's -10: most pairs are negatives).
        itc_loss_weight, itm_loss_weight, mlm_loss_weight (`float`, default 1.0):
            Weights of the three pretraining losses in `SiscForPreTraining`'s total loss.
        negative_caption_loss_weight (`float`, defaults to 0.0):
            Weight of `SiscForPreTraining`'s negative-caption loss (0 = off, ALBEF's three losses only): each image
            against its own caption and a hard negative caption, a copy of it with one word swapped so that it is false
            of the image (NegCLIP's swaps; the data's `negative_caption` column). It asks the image embedding for what
            in-batch negatives rarely differ in, e.g. shapes in the embedded dataset.
        word_prediction_loss_weight (`float`, defaults to 0.0):
            Weight of `SiscForPreTraining`'s word-prediction loss (0 = off, and the model has no word head): a linear
            head on the image tower's summary vector predicts which words the caption uses (a softmax over the
            vocabulary against the caption's bag of words, CLIP's bag-of-words objective as an auxiliary). Its targets
            are fixed classes, so it teaches the image tower what the contrastive and matching losses cannot start
            from random weights: both sides of a caption-image comparison must already know a concept before either
            gets a signal to learn it (the shapes of the embedded dataset).
        mlm_probability (`float`, defaults to 0.15):
            Fraction of text tokens masked for MLM.
        itm_random_negatives (`float`, defaults to 0.0):
            Share of the ITM negatives drawn uniformly from the batch's negatives instead of in proportion to the
            contrastive similarity (0 = ALBEF's hard negatives only): each negative comes from the mixture
            `(1 - share) * softmax(similarity) + share * uniform`. With `itm_random_negatives_end` it is the share at
            the first step of a curriculum.
        itm_random_negatives_end (`float`, *optional*):
            An easy-to-hard curriculum for ITM: the share of uniformly drawn negatives moves linearly from
            `itm_random_negatives` to this value over `itm_curriculum_steps` steps (e.g. 1 -> 0: random negatives,
            which differ in colours, teach the fusion encoder to ground words first; ITC-hard ones, which differ in
            shapes, follow). `None` (default): the share stays `itm_random_negatives`.
        itm_skip_negatives_above_pair (`bool`, defaults to `False`):
            Leave out of the ITM negatives those that the contrastive similarity scores at or above the pair itself:
            once the similarity is good, many of them are false negatives (a caption true of both images; on the
            embedded shapes data 64% of them), which would teach the ITM head to reject true pairs.
        itm_curriculum_steps (`int`, defaults to 10000):
            Length of that curriculum in optimisation steps (the trainer sets it to the run's length).
        gather_distributed (`bool`, defaults to `True`):
            Under `torch.distributed`, gather image and text embeddings of all processes (with gradients) so that
            each anchor's negatives, and the regulation weights, cover the global batch.
        use_momentum_distillation (`bool`, defaults to `False`):
            ALBEF's extras for `SiscForPreTraining`: an EMA (momentum) copy of the unimodal towers gives the in-batch
            candidates, a queue of its past features adds negatives (regulated like in-batch ones, with the teacher
            embeddings stored beside them), and its similarities give soft targets (momentum distillation).
        momentum (`float`, defaults to 0.995):
            EMA factor of the momentum encoder.
        queue_size (`int`, defaults to 0):
            Number of past momentum features kept as extra negatives (ALBEF: 65536); 0 = no queue.
        distill_alpha (`float`, defaults to 0.4):
            Weight of the momentum soft targets against the one-hot positive (ALBEF's alpha).
        cls_token_id, sep_token_id, mask_token_id (`int`, BERT's 101, 102, 103):
            Special tokens of the tokenizer, used by MLM masking (the pad id is `text_config.pad_token_id`).
        tie_word_embeddings (`bool`, defaults to `True`):
            Tie the MLM decoder to the text encoder's word embeddings (as BERT and ALBEF do).
        vqa_head (`str`, defaults to `"generate"`):
            Answer head of `SiscForQuestionAnswering`: `"generate"` = ALBEF's answer decoder (a BERT decoder with
            cross-attention to the fused question states; at inference the answers of `vqa_answers` are ranked: the
            `vqa_k_test` most likely by their first token are scored fully), `"classify"` = an MLP classifier over the
            fusion [CLS] with one output per answer of `vqa_answers` (binary cross-entropy on the soft VQA scores).
        vqa_answers (`list[str]`, *optional*):
            The closed answer list: the classifier's outputs (`"classify"`) or the candidates ranked at inference
            (`"generate"`). Distinct, non-empty strings; required by the classifier.
        vqa_k_test (`int`, defaults to 128):
            Number of candidate answers the answer decoder scores fully (ALBEF's k_test); capped by the list length.
        answer_decoder_layers (`int`, *optional*):
            Layers of the answer decoder (default: as many as the fusion encoder, from whose layers it starts).
    """

    model_type = "sisc"
    sub_configs_defaults = {
        "vision_config": SubConfigSpec(AutoConfig, model_type="vit"),
        "text_config": BertConfig,
        "fusion_encoder_config": BertConfig,
    }

    vision_config: dict | PreTrainedConfig | None = None
    text_config: dict | BertConfig | None = None
    fusion_encoder_config: dict | BertConfig | None = None
    embed_dim: int = 256
    vision_conv_stem: list[int] | None = None
    image_pooling: str = "cls"
    temperature_init: float = 0.07
    contrastive_loss: str = "srcl"
    weight_norm: str = "mean"
    delta: float = 8.0
    removal_threshold: float | None = None
    alpha_start: float = 1.0
    alpha_end: float = 0.0
    alpha_steps: int = 10000
    alpha_schedule: str = "linear"
    label_smoothing: float = 0.0
    soft_infonce_alpha: float = 1.0
    soft_infonce_temperature: float = 0.07
    soft_infonce_min_weight: float = 0.1
    debiased_prior: float = 0.1
    hard_negative_beta: float = 1.0
    siglip_bias_init: float = -10.0
    itc_loss_weight: float = 1.0
    itm_loss_weight: float = 1.0
    mlm_loss_weight: float = 1.0
    negative_caption_loss_weight: float = 0.0
    word_prediction_loss_weight: float = 0.0
    mlm_probability: float = 0.15
    itm_random_negatives: float = 0.0
    itm_random_negatives_end: float | None = None
    itm_skip_negatives_above_pair: bool = False
    itm_curriculum_steps: int = 10000
    gather_distributed: bool = True
    use_momentum_distillation: bool = False
    momentum: float = 0.995
    queue_size: int = 0
    distill_alpha: float = 0.4
    cls_token_id: int = 101
    sep_token_id: int = 102
    mask_token_id: int = 103
    tie_word_embeddings: bool = True
    initializer_range: float = 0.02
    vqa_head: str = "generate"
    vqa_answers: list[str] | None = None
    vqa_k_test: int = 128
    answer_decoder_layers: int | None = None

    def __post_init__(self, **kwargs):
        # The paper's base architecture when a sub-config is not given.
        if self.vision_config is None:
            self.vision_config = {"model_type": "vit", "image_size": 256, "patch_size": 16}
        if self.text_config is None:
            self.text_config = {"num_hidden_layers": 6}
        if self.fusion_encoder_config is None:
            self.fusion_encoder_config = {"num_hidden_layers": 6}
        super().__post_init__(**kwargs)
        self.validate_sisc_settings()

    def validate(self):
        # transformers runs `validate()` when saving; add SISC's own checks to its strict validators.
        super().validate()
        self.validate_sisc_settings()

    def validate_sisc_settings(self):
        """Raise a ValueError naming the field for any impossible setting (also run on save)."""
        def fail(field, message):
            raise ValueError(f"SiscConfig.{field} {message}")

        if self.vision_config.model_type not in VISION_MODEL_TYPES:
            fail("vision_config", f"must be the config of one of {VISION_MODEL_TYPES}, got model_type="
                                  f"{self.vision_config.model_type!r}")
        for name in ("vision_config", "text_config", "fusion_encoder_config"):
            sub = getattr(self, name)
            for size in SUB_CONFIG_SIZES[name]:
                value = getattr(sub, size, None)
                for item in value if isinstance(value, (list, tuple)) else [value]:  # image_size may be (h, w)
                    if isinstance(item, bool) or not isinstance(item, int) or item <= 0:
                        fail(f"{name}.{size}", f"must be a positive integer, got {value!r}")
            if sub.hidden_size % sub.num_attention_heads:
                fail(
                    f"{name}.num_attention_heads",
                    f"({sub.num_attention_heads}) must divide hidden_size ({sub.hidden_size})",
                )
        if self.fusion_encoder_config.hidden_size != self.text_config.hidden_size:
            fail(
                "fusion_encoder_config",
                f"hidden_size ({self.fusion_encoder_config.hidden_size}) must equal text_config.hidden_size "
                f"({self.text_config.hidden_size}): the fusion encoder continues the text encoder's hidden states",
            )
        if not isinstance(self.embed_dim, int) or self.embed_dim <= 0:
            fail("embed_dim", f"must be a positive integer, got {self.embed_dim!r}")
        self.validate_image_tower()
        if not 0.001 <= self.temperature_init <= 0.5:
            fail("temperature_init", f"must lie in [0.001, 0.5], got {self.temperature_init!r}")
        if self.contrastive_loss not in CONTRASTIVE_LOSSES:
            fail("contrastive_loss", f"must be one of {CONTRASTIVE_LOSSES}, got {self.contrastive_loss!r}")
        if self.weight_norm not in WEIGHT_NORMS:
            fail("weight_norm", f"must be one of {WEIGHT_NORMS}, got {self.weight_norm!r}")
        if not (isinstance(self.delta, (int, float)) and math.isfinite(self.delta) and self.delta > 0):
            fail("delta", f"must be a finite number > 0, got {self.delta!r}")
        if self.removal_threshold is not None and not 0 <= self.removal_threshold:
            fail("removal_threshold", f"must be None or >= 0, got {self.removal_threshold!r}")
        for field in ("alpha_start", "alpha_end"):
            if not 0.0 <= getattr(self, field) <= 1.0:
                fail(field, f"must lie in [0, 1], got {getattr(self, field)!r}")
        if not isinstance(self.alpha_steps, int) or self.alpha_steps < 0:
            fail("alpha_steps", f"must be a non-negative integer, got {self.alpha_steps!r}")
        if self.alpha_schedule not in ALPHA_SCHEDULES:
            fail("alpha_schedule", f"must be one of {ALPHA_SCHEDULES}, got {self.alpha_schedule!r}")
        self.validate_peer_objectives()
        vocab_size = self.text_config.vocab_size
        for field in ("cls_token_id", "sep_token_id", "mask_token_id"):
            if not 0 <= getattr(self, field) < vocab_size:
                fail(field, f"must be a token id in [0, {vocab_size}), got {getattr(self, field)!r}")
        for field in ("itc_loss_weight", "itm_loss_weight", "mlm_loss_weight", "negative_caption_loss_weight",
                      "word_prediction_loss_weight"):
            if getattr(self, field) < 0:
                fail(field, f"must be >= 0, got {getattr(self, field)!r}")
        if not 0.0 <= self.momentum < 1.0:
            fail("momentum", f"must lie in [0, 1), got {self.momentum!r}")
        if not isinstance(self.queue_size, int) or self.queue_size < 0:
            fail("queue_size", f"must be a non-negative integer, got {self.queue_size!r}")
        if self.queue_size and not self.use_momentum_distillation:
            fail("queue_size", "needs use_momentum_distillation=True (the queue holds momentum features)")
        if not 0.0 <= self.distill_alpha <= 1.0:
            fail("distill_alpha", f"must lie in [0, 1], got {self.distill_alpha!r}")
        if not 0.0 < self.mlm_probability < 1.0:
            fail("mlm_probability", f"must lie in (0, 1), got {self.mlm_probability!r}")
        if not 0.0 <= self.itm_random_negatives <= 1.0:
            fail("itm_random_negatives", f"must lie in [0, 1], got {self.itm_random_negatives!r}")
        if self.itm_random_negatives_end is not None and not 0.0 <= self.itm_random_negatives_end <= 1.0:
            fail("itm_random_negatives_end", f"must be None or lie in [0, 1], got {self.itm_random_negatives_end!r}")
        if isinstance(self.itm_curriculum_steps, bool) or not isinstance(self.itm_curriculum_steps, int) or self.itm_curriculum_steps < 0:
            fail("itm_curriculum_steps", f"must be a non-negative integer, got {self.itm_curriculum_steps!r}")
        self.validate_task_settings()

    def validate_image_tower(self):
        """Checks of the convolutional stem and the image pooling."""
        def fail(field, message):
            raise ValueError(f"SiscConfig.{field} {message}")

        if self.image_pooling not in IMAGE_POOLINGS:
            fail("image_pooling", f"must be one of {IMAGE_POOLINGS}, got {self.image_pooling!r}")
        stem = self.vision_conv_stem
        if stem is None:
            return
        if isinstance(stem, (str, bytes)) or not isinstance(stem, (list, tuple)) or not stem or any(
            isinstance(c, bool) or not isinstance(c, int) or c <= 0 for c in stem
        ):
            fail("vision_conv_stem", f"must be None or a non-empty list of positive channel counts, got {stem!r}")
        self.vision_conv_stem = list(stem)
        model_type = self.vision_config.model_type
        if model_type not in CONV_STEM_MODEL_TYPES:
            fail("vision_conv_stem", f"replaces the patch projection of {CONV_STEM_MODEL_TYPES} towers, not {model_type!r}")
        if self.vision_config.patch_size != 2 ** len(stem):
            fail("vision_conv_stem", f"has {len(stem)} stride-2 stages, so vision_config.patch_size must be "
                                     f"{2 ** len(stem)}, got {self.vision_config.patch_size}")

    def validate_peer_objectives(self):
        """Checks of the peer objectives' knobs (label smoothing, Soft-InfoNCE, debiased / hard negatives, SigLIP)."""
        def fail(field, message):
            raise ValueError(f"SiscConfig.{field} {message}")

        def number(field) -> float:
            value = getattr(self, field)
            if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
                fail(field, f"must be a finite number, got {value!r}")
            return value

        if not 0.0 <= number("label_smoothing") < 1.0:
            fail("label_smoothing", f"must lie in [0, 1), got {self.label_smoothing!r}")
        if self.label_smoothing and self.contrastive_loss not in SOFTMAX_LOSSES:
            fail("label_smoothing", f"applies to the softmax objectives {SOFTMAX_LOSSES}, not {self.contrastive_loss!r}")
        if self.label_smoothing and self.use_momentum_distillation:
            fail("label_smoothing", "cannot be combined with use_momentum_distillation (its soft targets replace it)")
        if number("soft_infonce_alpha") < 0:
            fail("soft_infonce_alpha", f"must be >= 0, got {self.soft_infonce_alpha!r}")
        if number("soft_infonce_temperature") <= 0:
            fail("soft_infonce_temperature", f"must be > 0, got {self.soft_infonce_temperature!r}")
        if not 0.0 <= number("soft_infonce_min_weight") <= 1.0:
            fail("soft_infonce_min_weight", f"must lie in [0, 1], got {self.soft_infonce_min_weight!r}")
        if not 0.0 <= number("debiased_prior") < 1.0:
            fail("debiased_prior", f"must lie in [0, 1), got {self.debiased_prior!r}")
        if number("hard_negative_beta") < 0:
            fail("hard_negative_beta", f"must be >= 0, got {self.hard_negative_beta!r}")
        number("siglip_bias_init")
        if self.use_momentum_distillation and self.contrastive_loss not in ("srcl", "infonce", "soft_infonce"):
            fail("use_momentum_distillation", "works with the weighted-softmax objectives 'srcl', 'infonce' and "
                                              f"'soft_infonce', not {self.contrastive_loss!r}")

    def validate_task_settings(self):
        """Checks of the downstream-task fields (VQA head and answer list)."""
        def fail(field, message):
            raise ValueError(f"SiscConfig.{field} {message}")

        if self.vqa_head not in VQA_HEADS:
            fail("vqa_head", f"must be one of {VQA_HEADS}, got {self.vqa_head!r}")
        answers = self.vqa_answers
        if answers is not None:
            if isinstance(answers, str) or not isinstance(answers, (list, tuple)):
                fail("vqa_answers", f"must be a list of answer strings, got {type(answers).__name__}")
            bad = [a for a in answers if not isinstance(a, str) or not a.strip()]
            if bad or not answers:
                fail("vqa_answers", f"must be a non-empty list of non-empty strings, got bad entries {bad[:5]!r}")
            if len(set(answers)) != len(answers):
                duplicates = sorted({a for a in answers if answers.count(a) > 1})
                fail("vqa_answers", f"must hold distinct answers, duplicated: {duplicates[:5]!r}")
            self.vqa_answers = list(answers)
        if not isinstance(self.vqa_k_test, int) or self.vqa_k_test < 1:
            fail("vqa_k_test", f"must be a positive integer, got {self.vqa_k_test!r}")
        if self.answer_decoder_layers is not None and (
            not isinstance(self.answer_decoder_layers, int) or self.answer_decoder_layers < 1
        ):
            fail("answer_decoder_layers", f"must be None or a positive integer, got {self.answer_decoder_layers!r}")

    def alpha_at(self, step: int) -> float:
        """Teacher share alpha of the mixed similarity at optimisation step `step` (0-based)."""
        if self.alpha_schedule == "constant" or self.alpha_steps == 0:
            return float(self.alpha_start if self.alpha_schedule == "constant" else self.alpha_end)
        progress = min(max(step, 0) / self.alpha_steps, 1.0)
        if self.alpha_schedule == "cosine":
            progress = 0.5 * (1.0 - math.cos(math.pi * progress))
        return float(self.alpha_start + (self.alpha_end - self.alpha_start) * progress)

    def itm_random_share_at(self, step: int) -> float:
        """Share of uniformly drawn ITM negatives at optimisation step `step` (0-based; see itm_random_negatives_end)."""
        if self.itm_random_negatives_end is None:
            return float(self.itm_random_negatives)
        progress = min(max(step, 0) / self.itm_curriculum_steps, 1.0) if self.itm_curriculum_steps else 1.0
        return float(self.itm_random_negatives + (self.itm_random_negatives_end - self.itm_random_negatives) * progress)

    @classmethod
    def base(cls, vocab_size: int = 30522, image_size: int = 256, **kwargs) -> "SiscConfig":
        """The paper's (ALBEF's) model: a ViT-B/16 image encoder at 256 px, 6 + 6 BERT-base layers (hidden 768,
        12 heads, 3072 intermediate) for the text and fusion encoders, 256-d projections, temperature 0.07, and,
        with `use_momentum_distillation=True`, momentum 0.995 and a queue of 65,536 features. About 210M parameters
        without the momentum copy (with BERT-base-uncased's 30,522-token vocabulary).

        Special token ids default to BERT-base-uncased's ([PAD]=0, [CLS]=101, [SEP]=102, [MASK]=103); pass a
        tokenizer's with its `vocab_size`.
        """
        bert = dict(vocab_size=vocab_size, pad_token_id=kwargs.pop("pad_token_id", 0), hidden_size=768,
                    num_attention_heads=12, intermediate_size=3072, max_position_embeddings=512)
        vision = dict(model_type="vit", image_size=image_size, patch_size=16, hidden_size=768, num_hidden_layers=12,
                      num_attention_heads=12, intermediate_size=3072, qkv_bias=True)
        kwargs.setdefault("embed_dim", 256)
        kwargs.setdefault("temperature_init", 0.07)
        kwargs.setdefault("momentum", 0.995)
        if kwargs.get("use_momentum_distillation"):
            kwargs.setdefault("queue_size", 65536)
        return cls(
            vision_config=vision,
            text_config={**bert, "num_hidden_layers": 6},
            fusion_encoder_config={**bert, "num_hidden_layers": 6},
            **kwargs,
        )

    @classmethod
    def small(cls, vocab_size: int, image_size: int = 64, hidden_size: int = 128, **kwargs) -> "SiscConfig":
        """The tiny default model of this repo: trains on a CPU in minutes on the embedded shapes dataset.

        Special token ids default to those of the shipped vocabulary (`sisc_vocab.txt`: [PAD]=0, [CLS]=2,
        [SEP]=3, [MASK]=4); pass others together with `vocab_size` for another tokenizer.

        Its image tower is a hybrid ViT (`SMALL_IMAGE_TOWER`: a 16-32-64 convolutional stem, the image embedding read
        out by the maximum over the patch states), half of its ITM negatives are random, and a word head on the image
        tower predicts each caption's words (`word_prediction_loss_weight=5`): from scratch and in a CPU budget, a
        plain ViT read out at [CLS] learns colours but not shapes, its ITM head stays at chance, and the contrastive
        and matching losses alone give the tower too weak a signal (`benchmarks/README.md`, "Why the main job's image
        tower does not see shapes"). Pass `**PLAIN_IMAGE_TOWER` (`vision_conv_stem=None, image_pooling="cls",
        itm_random_negatives=0.0, word_prediction_loss_weight=0.0`) for ALBEF's plain recipe.
        """
        for name, value in SMALL_IMAGE_TOWER.items():
            kwargs.setdefault(name, value)
        bert = dict(
            vocab_size=vocab_size,
            pad_token_id=kwargs.pop("pad_token_id", 0),
            hidden_size=hidden_size,
            num_attention_heads=4,
            intermediate_size=4 * hidden_size,
            max_position_embeddings=64,
        )
        vision = dict(
            model_type="vit",
            image_size=image_size,
            patch_size=8,
            hidden_size=hidden_size,
            num_hidden_layers=4,
            num_attention_heads=4,
            intermediate_size=4 * hidden_size,
        )
        kwargs.setdefault("embed_dim", 64)
        kwargs.setdefault("cls_token_id", 2)
        kwargs.setdefault("sep_token_id", 3)
        kwargs.setdefault("mask_token_id", 4)
        return cls(
            vision_config=vision,
            text_config={**bert, "num_hidden_layers": 2},
            fusion_encoder_config={**bert, "num_hidden_layers": 2},
            **kwargs,
        )


# The small model's recipe for its random image tower: stem, read-out, ITM negatives, word prediction (see
# `SiscConfig.small`); a pretrained tower keeps its own front and ALBEF's losses.
SMALL_IMAGE_TOWER = {"vision_conv_stem": [16, 32, 64], "image_pooling": "max", "itm_random_negatives": 0.5,
                     "word_prediction_loss_weight": 5.0}
# ALBEF's plain recipe (the small model's before): benchmarks whose committed numbers were measured with it pin it
PLAIN_IMAGE_TOWER = {"vision_conv_stem": None, "image_pooling": "cls", "itm_random_negatives": 0.0,
                     "word_prediction_loss_weight": 0.0}

SiscConfig.register_for_auto_class()

__all__ = ["SiscConfig", "VISION_MODEL_TYPES", "DUAL_ENCODER_TYPES", "IMAGE_POOLINGS", "SMALL_IMAGE_TOWER", "PLAIN_IMAGE_TOWER"]
