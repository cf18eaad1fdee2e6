"""The served model as KServe sees it: readiness, and its v1 and v2 inference protocols.

KServe's DataPlane answers /v1/models/<m>, /v2/models/<m>/ready (and, through
`ReadinessDataPlane`, /v2/health/ready) from `healthy()`, which is false until the
engine has loaded the model: the port opens at once (liveness passes during a long
load) while no traffic is routed to a replica that cannot answer yet.

v1 predict: {"instances": ["prompt" | {"prompt", "max_tokens", "temperature", "top_p",
"stop", "seed"}], "parameters": {defaults for all}} -> {"predictions": [{"text",
"finish_reason", "prompt_tokens", "completion_tokens"}]}.
v2 infer: a BYTES input (named text_input, or the first), one prompt per element, the
same sampling keys in the request's parameters -> BYTES outputs text_output and
finish_reason. Instances go to the engine together, so they are batched.
"""

from __future__ import annotations

import uuid
from typing import Any

from kserve import Model
from kserve.protocol.dataplane import DataPlane
from kserve.protocol.infer_type import InferOutput, InferRequest, InferResponse
from pydantic import BaseModel, Field, ValidationError

from modelsmith_runtime.serve.service import Generation, ServeError, Service, gather


class Options(BaseModel):
    """The sampling keys of an instance or of the request's parameters."""

    max_tokens: int | None = Field(default=None, ge=1)
    temperature: float = Field(default=1.0, ge=0.0, le=2.0)
    top_p: float = Field(default=1.0, gt=0.0, le=1.0)
    seed: int | None = None
    stop: str | list[str] | None = None
    ignore_eos: bool = False


class ReadinessDataPlane(DataPlane):  # type: ignore[misc]
    """KServe's server readiness is True whatever its models say; ours is the model's."""

    async def ready(self) -> bool:
        models = self.model_registry.get_models().values()
        return bool(models) and all([await m.healthy() for m in models])


def _text(value: Any) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)


def _flat(data: Any) -> list[str]:
    if isinstance(data, list):
        return [s for item in data for s in _flat(item)]
    if hasattr(data, "tolist"):
        return _flat(data.tolist())
    return [_text(data)]


class GenerativeModel(Model):  # type: ignore[misc]
    def __init__(self, service: Service) -> None:
        super().__init__(service.name)
        self.service = service

    def load(self) -> bool:
        """KServe calls this when a request finds the model not ready; the engine loads
        it on its own thread, so this only reports."""
        self.ready = self.service.engine.loaded.is_set()
        return bool(self.ready)

    async def healthy(self) -> bool:
        return self.load()

    def stop(self) -> None:
        self.ready = False

    async def _one(self, prompt: str, options: dict[str, Any]) -> Generation:
        try:
            given = {k: options[k] for k in Options.model_fields if k in options}
            known = Options.model_validate(given)
        except ValidationError as exc:
            raise ServeError(400, f"invalid parameters: {exc.errors()[0]['msg']}") from exc
        ids = self.service.encode(prompt)
        params = self.service.sampling(ids, **known.model_dump())
        return await self.service.generate(ids, params)

    async def _all(self, prompts: list[str], options: list[dict[str, Any]]) -> list[Generation]:
        self.service.require_ready(None)
        return await gather([self._one(p, o) for p, o in zip(prompts, options, strict=True)])

    async def predict(
        self,
        payload: dict[str, Any] | InferRequest,
        headers: dict[str, str] | None = None,
        response_headers: dict[str, str] | None = None,
    ) -> dict[str, Any] | InferResponse:
        if isinstance(payload, InferRequest):
            return await self._infer(payload)
        instances = payload.get("instances") if isinstance(payload, dict) else None
        if not isinstance(instances, list) or not instances:
            raise ServeError(400, 'a v1 predict body is {"instances": [...]}, one per prompt')
        shared = payload.get("parameters") or {}
        prompts, options = [], []
        for item in instances:
            if isinstance(item, str):
                prompts.append(item)
                options.append(dict(shared))
            elif isinstance(item, dict) and isinstance(item.get("prompt"), str):
                prompts.append(item["prompt"])
                options.append({**shared, **item})
            else:
                raise ServeError(400, 'each instance is a prompt string or {"prompt": ...}')
        results = await self._all(prompts, options)
        return {
            "predictions": [
                {
                    "text": r.text,
                    "finish_reason": r.finish_reason,
                    "prompt_tokens": r.prompt_tokens,
                    "completion_tokens": r.completion_tokens,
                }
                for r in results
            ]
        }

    async def _infer(self, request: InferRequest) -> InferResponse:
        inputs = [i for i in request.inputs if i.datatype == "BYTES"]
        named = [i for i in inputs if i.name == "text_input"]
        if not inputs:
            raise ServeError(400, "v2 infer needs a BYTES input (text_input) of prompts")
        prompts = _flat((named or inputs)[0].data)
        options = dict(request.parameters or {})
        results = await self._all(prompts, [options] * len(prompts))
        shape = [len(results)]
        outputs = [
            InferOutput("text_output", shape, "BYTES", [r.text for r in results]),
            InferOutput("finish_reason", shape, "BYTES", [r.finish_reason for r in results]),
        ]
        return InferResponse(
            response_id=request.id or str(uuid.uuid4()),
            model_name=self.name,
            infer_outputs=outputs,
        )
