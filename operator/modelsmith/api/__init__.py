"""The modelsmith.io/v1alpha1 API: pydantic models are the single source of truth.

crdgen turns them into the CRDs; the operator validates every body with them.
"""

from modelsmith.api.datapipeline import DATAPIPELINE
from modelsmith.api.finetune import FINETUNE
from modelsmith.api.inference import INFERENCESERVICE
from modelsmith.api.meta import GROUP, VERSION, KindInfo
from modelsmith.api.pretrain import PRETRAINJOB
from modelsmith.api.quantize import QUANTIZEJOB

KINDS: tuple[KindInfo, ...] = (DATAPIPELINE, PRETRAINJOB, FINETUNE, QUANTIZEJOB, INFERENCESERVICE)

__all__ = [
    "DATAPIPELINE",
    "FINETUNE",
    "GROUP",
    "INFERENCESERVICE",
    "KINDS",
    "PRETRAINJOB",
    "QUANTIZEJOB",
    "VERSION",
    "KindInfo",
]
