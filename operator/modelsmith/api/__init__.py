"""The modelsmith.io/v1alpha1 API: pydantic models are the single source of truth.

crdgen turns them into the CRDs; the operator validates every body with them.
"""

from modelsmith.api.datapipeline import DATAPIPELINE
from modelsmith.api.meta import GROUP, VERSION, KindInfo

KINDS: tuple[KindInfo, ...] = (DATAPIPELINE,)

__all__ = ["DATAPIPELINE", "GROUP", "KINDS", "VERSION", "KindInfo"]
