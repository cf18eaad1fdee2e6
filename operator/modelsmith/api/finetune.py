"""FineTune: adapt a pretrained model with full fine-tuning, LoRA or QLoRA (peft)."""

from __future__ import annotations

from enum import StrEnum
from typing import Annotated

from pydantic import Field

from modelsmith.api.common import (
    BatchStatus,
    Input,
    WorkloadSpec,
    batch_columns,
    cel,
    defaulted,
)
from modelsmith.api.meta import CamelModel, KindInfo, LongestChild
from modelsmith.api.pretrain import Precision


class DatasetFormat(StrEnum):
    INSTRUCTION = "instruction"
    CHAT = "chat"


class Method(StrEnum):
    FULL = "full"
    LORA = "lora"
    QLORA = "qlora"


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


class Hyperparameters(CamelModel):
    """Optimization settings."""

    learning_rate: float = Field(default=2e-4, gt=0, le=1, description="Peak learning rate.")
    epochs: float = Field(default=1, gt=0, le=100, description="Passes over the dataset.")
    batch_size: int = Field(default=8, ge=1, le=65536, description="Global batch size.")
    micro_batch_size: int = Field(default=1, ge=1, le=4096, description="Per GPU per pass.")
    sequence_length: int = Field(default=2048, ge=16, le=1_048_576, description="Max tokens.")
    warmup_ratio: float = Field(default=0.03, ge=0, le=1, description="Warm-up share.")
    weight_decay: float = Field(default=0.0, ge=0, le=1, description="AdamW weight decay.")


class FineTuneSpec(WorkloadSpec):
    """Desired state of a FineTune."""

    model_config = cel(
        (
            "self.method == 'full' ? !has(self.lora) : true",
            "lora settings need method lora or qlora",
            lambda s: s.method != "full" or s.lora is None,
        ),
        (
            "!self.mergeAdapter || self.method != 'full'",
            "mergeAdapter needs method lora or qlora",
            lambda s: not s.merge_adapter or s.method != "full",
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
    method: Method = Field(default=Method.LORA, description="full, lora or qlora.")
    lora: LoRA | None = Field(default=None, description="Adapter settings (lora, qlora).")
    hyperparameters: Hyperparameters = defaulted(Hyperparameters, "Optimization settings.")
    precision: Precision = Field(default=Precision.BF16, description="Mixed precision.")
    merge_adapter: bool = Field(
        default=False, description="Merge the adapter into the base weights when done."
    )


FINETUNE = KindInfo(
    kind="FineTune",
    plural="finetunes",
    short_names=("ft",),
    spec=FineTuneSpec,
    status=BatchStatus,
    description="Full, LoRA or QLoRA fine-tuning of a pretrained model.",
    longest_child=LongestChild("NAME-run-0", "the hostname of its pod"),
    printer_columns=batch_columns("EvalLoss", ".status.outputs.metrics.eval_loss"),
)
