"""PretrainJob: a dense or mixture-of-experts decoder trained from scratch.

Architecture fields use transformers' config vocabulary (Llama, Mixtral) so a spec
maps one-to-one onto the model class the trainer builds.
"""

from __future__ import annotations

from enum import StrEnum

from pydantic import Field

from modelsmith.api.common import (
    BatchStatus,
    Input,
    ModelSpec,
    batch_columns,
    cel,
    defaulted,
    immutable,
)
from modelsmith.api.freeze import Freeze
from modelsmith.api.meta import CamelModel, KindInfo, LongestChild
from modelsmith.api.mixture import Mixture


class ArchitectureType(StrEnum):
    DENSE = "dense"
    MOE = "moe"


class Architecture(CamelModel):
    """The decoder to build (Llama-style dense, or Mixtral-style mixture of experts)."""

    model_config = cel(
        (
            "self.type == 'moe' ? has(self.experts) : !has(self.experts)",
            "architecture.experts is required for moe and not allowed for dense",
            lambda s: (s.experts is not None) == (s.type == "moe"),
        ),
        (
            "self.hiddenSize % self.heads == 0",
            "architecture.hiddenSize must divide by heads",
            lambda s: s.hidden_size % s.heads == 0,
        ),
        (
            "!has(self.kvHeads) || (self.kvHeads <= self.heads && self.heads % self.kvHeads == 0)",
            "architecture.kvHeads must divide heads",
            lambda s: s.kv_heads is None or (s.kv_heads <= s.heads and s.heads % s.kv_heads == 0),
        ),
        (
            "!has(self.topK) || (has(self.experts) && self.topK <= self.experts)",
            "architecture.topK must not exceed experts",
            lambda s: s.top_k is None or (s.experts is not None and s.top_k <= s.experts),
        ),
        (
            "self.type == 'moe' || "
            "(!has(self.topK) && !has(self.capacityFactor) && !has(self.auxLossCoef))",
            "architecture: experts, topK, capacityFactor, auxLossCoef are moe only",
            lambda s: (
                s.type == "moe"
                or (s.top_k is None and s.capacity_factor is None and s.aux_loss_coef is None)
            ),
        ),
    )

    type: ArchitectureType = Field(default=ArchitectureType.DENSE, description="dense or moe.")
    layers: int = Field(ge=1, le=512, description="Decoder layers.")
    hidden_size: int = Field(ge=64, le=65536, description="Model width.")
    heads: int = Field(ge=1, le=1024, description="Attention heads.")
    kv_heads: int | None = Field(
        default=None, ge=1, le=1024, description="Key/value heads (grouped-query attention)."
    )
    intermediate_size: int | None = Field(
        default=None, ge=64, le=262144, description="MLP width (default 8/3 * hidden, rounded)."
    )
    vocab_size: int | None = Field(
        default=None, ge=256, le=1_048_576, description="Default: the tokenizer's vocabulary."
    )
    experts: int | None = Field(default=None, ge=2, le=1024, description="moe: experts.")
    top_k: int | None = Field(default=None, ge=1, le=64, description="moe: experts per token.")
    capacity_factor: float | None = Field(
        default=None,
        gt=0,
        le=16,
        description="moe: cap each expert at ceil(capacityFactor * tokens * topK / experts) "
        "token slots per micro-batch (Switch Transformer); a token past an expert's "
        "capacity is dropped for that expert and keeps its other experts and the "
        "residual path. Unset: dropless, every token reaches its top-k experts.",
    )
    aux_loss_coef: float | None = Field(
        default=None, ge=0, le=1, description="moe: load-balancing loss coefficient."
    )


class Schedule(StrEnum):
    COSINE = "cosine"
    LINEAR = "linear"
    CONSTANT = "constant"
    WSD = "wsd"


class Training(CamelModel):
    """Optimization settings; the run length is steps or tokens, not both."""

    model_config = cel(
        (
            "has(self.steps) != has(self.tokens)",
            "training: set exactly one of steps or tokens",
            lambda s: (s.steps is None) != (s.tokens is None),
        ),
        (
            "self.globalBatchSize % self.microBatchSize == 0",
            "training.globalBatchSize must be a multiple of microBatchSize",
            lambda s: s.global_batch_size % s.micro_batch_size == 0,
        ),
    )

    global_batch_size: int = Field(ge=1, le=1_048_576, description="Sequences per step.")
    micro_batch_size: int = Field(ge=1, le=65536, description="Sequences per GPU per pass.")
    sequence_length: int = Field(default=2048, ge=16, le=1_048_576, description="Tokens each.")
    learning_rate: float = Field(gt=0, le=1, description="Peak learning rate.")
    warmup_ratio: float = Field(default=0.01, ge=0, le=1, description="Warm-up share of steps.")
    schedule: Schedule = Field(default=Schedule.COSINE, description="Learning-rate schedule.")
    weight_decay: float = Field(default=0.1, ge=0, le=1, description="AdamW weight decay.")
    grad_clip: float = Field(default=1.0, ge=0, description="Max gradient norm (0: off).")
    steps: int | None = Field(default=None, ge=1, description="Optimizer steps to run.")
    tokens: int | None = Field(default=None, ge=1, description="Tokens to train on.")
    seed: int = Field(default=0, ge=0, description="Seed for init and data order.")


class Precision(StrEnum):
    BF16 = "bf16"
    FP16 = "fp16"
    FP32 = "fp32"


class Strategy(StrEnum):
    DDP = "ddp"
    FSDP = "fsdp"
    DEEPSPEED = "deepspeed"


class Launcher(StrEnum):
    TORCHRUN = "torchrun"
    RAY = "ray"


class Offload(StrEnum):
    NONE = "none"
    CPU = "cpu"


class Distribution(CamelModel):
    """How the run spreads over nodes and GPUs."""

    model_config = cel(
        (
            "!has(self.zeroStage) || self.strategy == 'deepspeed'",
            "distribution.zeroStage applies to strategy deepspeed only",
            lambda s: s.zero_stage is None or s.strategy == "deepspeed",
        ),
        (
            "self.offload == 'none' || self.strategy != 'ddp'",
            "distribution.offload needs strategy fsdp or deepspeed",
            lambda s: s.offload == "none" or s.strategy != "ddp",
        ),
    )

    nodes: int = Field(default=1, ge=1, le=1024, description="Nodes (one pod each).")
    strategy: Strategy = Field(default=Strategy.FSDP, description="Data-parallel strategy.")
    zero_stage: int | None = Field(default=None, ge=1, le=3, description="DeepSpeed ZeRO stage.")
    offload: Offload = Field(default=Offload.NONE, description="Offload optimizer state.")
    launcher: Launcher = Field(default=Launcher.TORCHRUN, description="torchrun or Ray Train.")


class Checkpoint(CamelModel):
    """Checkpoints and automatic resume after a pod failure or an unsuspend."""

    interval_steps: int = Field(default=1000, ge=1, description="Save every N steps.")
    keep_last: int = Field(default=3, ge=1, le=100, description="Checkpoints kept.")
    resume: bool = Field(default=True, description="Resume from the latest checkpoint.")


class PretrainJobSpec(ModelSpec):
    """Desired state of a PretrainJob."""

    model_config = cel(
        (
            "self.training.globalBatchSize % (self.training.microBatchSize * "
            "self.distribution.nodes * "
            "(self.resources.gpus == 0 ? 1 : self.resources.gpus)) == 0",
            "training.globalBatchSize must be a multiple of microBatchSize * "
            "distribution.nodes * resources.gpus (one process per pod when gpus is 0)",
            lambda s: (
                s.training.global_batch_size
                % (s.training.micro_batch_size * s.distribution.nodes * max(s.resources.gpus, 1))
                == 0
            ),
        ),
        # Incremental pretraining (issue 16): freezing only means something for trained
        # weights, and at least one decoder layer must learn.
        (
            "!has(self.freeze) || has(self.initFrom)",
            "freeze needs initFrom: frozen randomly initialised weights would stay random",
            lambda s: s.freeze is None or s.init_from is not None,
        ),
        (
            "!has(self.freeze) || !has(self.freeze.layers) || "
            "self.freeze.layers < self.architecture.layers",
            "freeze.layers must be below architecture.layers: at least one decoder layer trains",
            lambda s: (
                s.freeze is None
                or s.freeze.layers is None
                or s.freeze.layers < s.architecture.layers
            ),
        ),
    )

    dataset: Input = Field(description="Tokenized shards, usually fromRef a DataPipeline.")
    tokenizer: Input | None = Field(
        default=None, description="Default: the tokenizer published with the dataset."
    )
    architecture: Architecture = Field(
        description="The model. Immutable: checkpoints only fit the architecture they came from.",
        json_schema_extra=immutable("architecture is immutable"),
    )
    training: Training = Field(description="Optimization and run length.")
    precision: Precision = Field(default=Precision.BF16, description="Mixed precision.")
    distribution: Distribution = defaulted(Distribution, "Nodes, GPUs and strategy.")
    checkpoint: Checkpoint = defaulted(Checkpoint, "Checkpointing.")
    init_from: Input | None = Field(
        default=None,
        description="Continued pretraining: start from this model's weights instead of a "
        "random init, fromRef a PretrainJob or the URI of a model in the Hugging Face "
        "layout. Its config.json must match architecture field by field (and vocabSize, "
        "which defaults to the model's); a mismatch fails the run naming each field.",
    )
    freeze: Freeze | None = Field(
        default=None,
        description="Parameters of the initFrom model that stay fixed (needs initFrom).",
    )
    mixture: Mixture | None = Field(
        default=None,
        description=(
            "How the trainer weighs the dataset's sources. Absent: as packed (static); "
            "set it to let the weights follow each source's loss."
        ),
    )


PRETRAINJOB = KindInfo(
    kind="PretrainJob",
    plural="pretrainjobs",
    short_names=("ptj",),
    spec=PretrainJobSpec,
    status=BatchStatus,
    description="Distributed pretraining of a dense or mixture-of-experts decoder.",
    longest_child=LongestChild("NAME-run-1023", "the hostname of the 1024th worker pod"),
    printer_columns=batch_columns("Loss", ".status.outputs.metrics.loss", versioned=True),
)
