"""The four batch kinds, described once: which image, how many pods, which inputs.

Everything else about running them (ConfigMap, Job, Service, status, refs) is shared,
so a fifth batch kind is one entry here.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from modelsmith.api import DATAPIPELINE, FINETUNE, PRETRAINJOB, QUANTIZEJOB, KindInfo
from modelsmith.api.common import Input, WorkloadSpec
from modelsmith.api.datapipeline import DataEngine, DataPipelineSpec
from modelsmith.api.finetune import FineTuneSpec
from modelsmith.api.meta import GROUP, VERSION
from modelsmith.api.pretrain import Launcher, PretrainJobSpec
from modelsmith.api.quantize import QuantizeJobSpec
from modelsmith.builders.batch import Layout


@dataclass(frozen=True)
class BatchKind:
    info: KindInfo
    layout: Callable[[Any], Layout]
    inputs: Callable[[Any], dict[str, Input | None]]

    def parse(self, raw: dict[str, Any]) -> WorkloadSpec:
        spec = self.info.spec.model_validate(raw)
        if not isinstance(spec, WorkloadSpec):
            raise TypeError(f"{self.info.kind} spec is not a WorkloadSpec")
        return spec


def _data_layout(s: DataPipelineSpec) -> Layout:
    return Layout(
        "data",
        "data",
        workers=s.workers,
        gpus_per_worker=s.resources.gpus,
        ray=s.engine == DataEngine.RAY,
    )


def _data_inputs(s: DataPipelineSpec) -> dict[str, Input | None]:
    perplexity, domain = s.filters.perplexity, s.filters.domain
    return {
        "tokenizer": s.tokenizer.existing,
        "referenceModel": perplexity.reference_model if perplexity else None,
        "domainReference": domain.reference if domain else None,
    }


def _pretrain_layout(s: PretrainJobSpec) -> Layout:
    d = s.distribution
    return Layout(
        "trainer",
        "pretrain",
        workers=d.nodes,
        gpus_per_worker=s.resources.gpus,
        torchrun=d.launcher == Launcher.TORCHRUN,
        ray=d.launcher == Launcher.RAY,
    )


def _finetune_layout(s: FineTuneSpec) -> Layout:
    gpus = s.resources.gpus
    # One process per pod: the fine-tuning runtime is not a torch.distributed program
    # yet, so no torchrun rendezvous env (the runtime would start one rank per GPU).
    return Layout("trainer", "finetune", workers=1, gpus_per_worker=gpus)


def _quantize_inputs(s: QuantizeJobSpec) -> dict[str, Input | None]:
    return {
        "model": s.model,
        "calibration": s.calibration.dataset if s.calibration else None,
        "evalDataset": s.quality_gate.eval_dataset,
    }


BATCH_KINDS: tuple[BatchKind, ...] = (
    BatchKind(DATAPIPELINE, _data_layout, _data_inputs),
    BatchKind(
        PRETRAINJOB,
        _pretrain_layout,
        lambda s: {"dataset": s.dataset, "tokenizer": s.tokenizer, "initFrom": s.init_from},
    ),
    BatchKind(
        FINETUNE,
        _finetune_layout,
        lambda s: {
            "baseModel": s.base_model,
            "dataset": s.dataset,
            "teacher": s.distill.teacher if s.distill else None,
        },
    ),
    BatchKind(
        QUANTIZEJOB,
        lambda s: Layout("quantizer", "quantize", workers=1, gpus_per_worker=s.resources.gpus),
        _quantize_inputs,
    ),
)
PLURALS = {k.info.kind: k.info.plural for k in BATCH_KINDS}


def batch_owner(metadata: dict[str, Any]) -> tuple[BatchKind, dict[str, Any]] | None:
    """The batch kind and ownerReference of the modelsmith resource controlling an
    object (a Job we created), or None when no batch resource of ours controls it."""
    for ref in metadata.get("ownerReferences", []) or []:
        if ref.get("controller") and ref.get("apiVersion") == f"{GROUP}/{VERSION}":
            kind = _BY_KIND.get(ref.get("kind", ""))
            return (kind, ref) if kind is not None else None
    return None


_BY_KIND = {k.info.kind: k for k in BATCH_KINDS}
