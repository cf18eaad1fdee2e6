"""FineTune: adapt a pretrained model: full fine-tuning, LoRA or QLoRA (peft), prefix
tuning (peft), bottleneck adapters, or distillation from a teacher model."""

from __future__ import annotations

from enum import StrEnum
from typing import Annotated

from pydantic import Field

from modelsmith.api.common import (
    BatchStatus,
    Input,
    ModelSpec,
    batch_columns,
    cel,
    defaulted,
)
from modelsmith.api.freeze import Freeze
from modelsmith.api.meta import CamelModel, KindInfo, LongestChild
from modelsmith.api.pretrain import Precision


class DatasetFormat(StrEnum):
    INSTRUCTION = "instruction"
    CHAT = "chat"


class Method(StrEnum):
    FULL = "full"
    LORA = "lora"
    QLORA = "qlora"
    PREFIX = "prefix"
    ADAPTER = "adapter"
    DISTILL = "distill"


class Activation(StrEnum):
    RELU = "relu"
    GELU = "gelu"
    SILU = "silu"


class LoRA(CamelModel):
    """Low-rank adapter settings (peft LoraConfig)."""

    rank: int = Field(default=16, ge=1, le=1024, description="Adapter rank r.")
    alpha: float = Field(default=32, gt=0, le=4096, description="Scaling alpha.")
    dropout: float = Field(default=0.05, ge=0, lt=1, description="Adapter dropout.")
    target_modules: list[Annotated[str, Field(min_length=1, max_length=128)]] = Field(
        default_factory=lambda: ["q_proj", "v_proj"],
        min_length=1,
        max_length=64,
        description="Module names that get adapters (e.g. q_proj, v_proj).",
    )


class Prefix(CamelModel):
    """Prefix tuning (peft PrefixTuningConfig): trained key/value vectors in every layer."""

    model_config = cel(
        (
            "!has(self.projectionHiddenSize) || self.projection",
            "prefix.projectionHiddenSize needs prefix.projection: true",
            lambda s: s.projection_hidden_size is None or s.projection,
        ),
    )

    virtual_tokens: int = Field(
        default=20,
        ge=1,
        le=4096,
        description="Virtual tokens of the prefix: each layer attends to this many "
        "trained key/value pairs before the real tokens.",
    )
    projection: bool = Field(
        default=False,
        description="Train the prefix through a two-layer MLP (peft prefix_projection), "
        "which trains more stably and costs far more trainable parameters.",
    )
    projection_hidden_size: int | None = Field(
        default=None,
        ge=1,
        le=65536,
        description="Hidden width of that MLP (peft encoder_hidden_size); unset, the "
        "model's hidden size. Only with projection: true.",
    )


class Adapter(CamelModel):
    """Bottleneck adapters (Houlsby et al. 2019; Pfeiffer et al. 2020): a small residual
    MLP (down-projection, nonlinearity, up-projection) on the output of each named
    sublayer of every decoder layer, on a frozen base."""

    model_config = cel(
        (
            "!(has(self.reductionFactor) && has(self.bottleneckSize))",
            "set adapter.reductionFactor or adapter.bottleneckSize, not both",
            lambda s: s.reduction_factor is None or s.bottleneck_size is None,
        ),
    )

    reduction_factor: int | None = Field(
        default=None,
        ge=1,
        le=65536,
        description="Bottleneck width = hidden size / reductionFactor (rounded down, at "
        "least 1). Unset, and bottleneckSize unset too: 16.",
    )
    bottleneck_size: int | None = Field(
        default=None, ge=1, le=65536, description="Bottleneck width, in place of reductionFactor."
    )
    target_modules: list[Annotated[str, Field(min_length=1, max_length=128)]] = Field(
        default_factory=lambda: ["self_attn", "mlp"],
        min_length=1,
        max_length=16,
        description="Sublayers of each decoder layer whose output passes through an "
        "adapter before the residual add: self_attn and mlp is Houlsby's placement, mlp "
        "alone Pfeiffer's.",
    )
    activation: Activation = Field(
        default=Activation.RELU, description="The bottleneck's nonlinearity: relu, gelu, silu."
    )


class Distill(CamelModel):
    """Knowledge distillation: the student (baseModel) learns the teacher's distribution.

    loss = alpha * T^2 * KL(softmax(teacher/T) || softmax(student/T)) + (1 - alpha) * CE,
    over the response tokens, T the temperature.
    """

    teacher: Input = Field(
        description="The teacher model, usually fromRef a PretrainJob or FineTune (a plain "
        "model: a merged one, not an adapter). It must use the student's tokenizer."
    )
    temperature: float = Field(
        default=2.0, gt=0, le=100, description="Softmax temperature T of both distributions."
    )
    alpha: float = Field(
        default=0.5,
        ge=0,
        le=1,
        description="Weight of the distillation term; 1 - alpha weighs the cross-entropy "
        "on the dataset's own responses.",
    )


LORA_METHODS = (Method.LORA, Method.QLORA)


class Hyperparameters(CamelModel):
    """Optimization settings."""

    learning_rate: float = Field(default=2e-4, gt=0, le=1, description="Peak learning rate.")
    epochs: float = Field(default=1, gt=0, le=100, description="Passes over the dataset.")
    batch_size: int = Field(default=8, ge=1, le=65536, description="Global batch size.")
    micro_batch_size: int = Field(default=1, ge=1, le=4096, description="Per GPU per pass.")
    sequence_length: int = Field(default=2048, ge=16, le=1_048_576, description="Max tokens.")
    warmup_ratio: float = Field(default=0.03, ge=0, le=1, description="Warm-up share.")
    weight_decay: float = Field(default=0.0, ge=0, le=1, description="AdamW weight decay.")


class FineTuneSpec(ModelSpec):
    """Desired state of a FineTune."""

    model_config = cel(
        (
            "!has(self.lora) || self.method in ['lora', 'qlora']",
            "lora settings need method lora or qlora",
            lambda s: s.lora is None or s.method in LORA_METHODS,
        ),
        (
            "!has(self.prefix) || self.method == 'prefix'",
            "prefix settings need method prefix",
            lambda s: s.prefix is None or s.method == Method.PREFIX,
        ),
        (
            "!has(self.adapter) || self.method == 'adapter'",
            "adapter settings need method adapter",
            lambda s: s.adapter is None or s.method == Method.ADAPTER,
        ),
        (
            "!has(self.distill) || self.method == 'distill'",
            "distill settings need method distill",
            lambda s: s.distill is None or s.method == Method.DISTILL,
        ),
        (
            "self.method != 'distill' || has(self.distill)",
            "method distill needs distill.teacher",
            lambda s: s.method != Method.DISTILL or s.distill is not None,
        ),
        (
            "!self.mergeAdapter || self.method in ['lora', 'qlora']",
            "mergeAdapter needs method lora or qlora: full and distill publish a plain "
            "model already, and a prefix or bottleneck adapter cannot be merged into "
            "plain weights",
            lambda s: not s.merge_adapter or s.method in LORA_METHODS,
        ),
        (
            "!has(self.freeze) || self.method in ['full', 'distill']",
            "freeze needs method full or distill: the other methods keep the whole base "
            "frozen and train only what they add",
            lambda s: s.freeze is None or s.method in (Method.FULL, Method.DISTILL),
        ),
        (
            "self.hyperparameters.batchSize % self.hyperparameters.microBatchSize == 0",
            "hyperparameters.batchSize must be a multiple of microBatchSize",
            lambda s: s.hyperparameters.batch_size % s.hyperparameters.micro_batch_size == 0,
        ),
    )

    base_model: Input = Field(description="The model to adapt, usually fromRef a PretrainJob.")
    dataset: Input = Field(description="Instruction or chat jsonl.")
    format: DatasetFormat = Field(
        default=DatasetFormat.CHAT, description="instruction ({prompt, response}) or chat."
    )
    eval_split: float = Field(
        default=0.05, ge=0, le=0.5, description="Share held out for eval loss and perplexity."
    )
    method: Method = Field(
        default=Method.LORA,
        description="full (every weight trains), lora or qlora (peft low-rank adapters; "
        "qlora on a 4-bit base), prefix (peft prefix tuning), adapter (bottleneck "
        "adapters), or distill (every weight of the student, baseModel, trains "
        "against a teacher's distribution).",
    )
    lora: LoRA | None = Field(default=None, description="Adapter settings (lora, qlora).")
    prefix: Prefix | None = Field(default=None, description="Prefix tuning settings (prefix).")
    adapter: Adapter | None = Field(
        default=None, description="Bottleneck adapter settings (adapter)."
    )
    distill: Distill | None = Field(
        default=None, description="The teacher and the loss's weights (distill)."
    )
    freeze: Freeze | None = Field(
        default=None,
        description="Incremental training (full, distill): parameters that stay fixed.",
    )
    hyperparameters: Hyperparameters = defaulted(Hyperparameters, "Optimization settings.")
    precision: Precision = Field(default=Precision.BF16, description="Mixed precision.")
    merge_adapter: bool = Field(
        default=False,
        description="Merge the LoRA adapter into the base weights when done, publishing a "
        "plain model (lora, qlora). Unset, lora, qlora, prefix and adapter publish the "
        "adapter alone with a pointer to its base, which QuantizeJob and "
        "InferenceService do not read.",
    )


FINETUNE = KindInfo(
    kind="FineTune",
    plural="finetunes",
    short_names=("ft",),
    spec=FineTuneSpec,
    status=BatchStatus,
    description="Full, LoRA, QLoRA, prefix, bottleneck-adapter fine-tuning or distillation "
    "of a pretrained model.",
    longest_child=LongestChild("NAME-run-0", "the hostname of its pod"),
    printer_columns=batch_columns("EvalLoss", ".status.outputs.metrics.eval_loss", versioned=True),
)
