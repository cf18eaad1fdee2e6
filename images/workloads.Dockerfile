# syntax=docker/dockerfile:1
# The four workload images, one build target each:
#   data       DataPipeline (readers, filters incl. TF-IDF domain similarity, MinHash and
#              SimHash dedup, BPE, packing), on Indexed Job workers or Ray Data. No torch: a perplexity filter with a reference
#              model needs the trainer image (set spec.image).
#   trainer    PretrainJob and FineTune: torch (its pip wheels carry the CUDA runtime),
#              transformers, peft, bitsandbytes, DeepSpeed and Ray Train.
#   quantizer  QuantizeJob: torch, transformers, torchao; onnx and onnxruntime for
#              spec.export (TensorRT is not in it: format tensorrt needs an image with it).
#   server     InferenceService with runtime builtin: KServe's ModelServer (FastAPI,
#              uvicorn) around modelsmith's own batching engine on torch and transformers.
# Build from the repository root, one target at a time:
#   docker build -f images/workloads.Dockerfile --target trainer .
# The stages they share are written once here, so the images share those layers: the
# common dependencies in all four, torch and the hf extra in the three torch images.
# The base is pinned by version; pin it by digest too where your registry policy asks
# (--build-arg PYTHON_IMAGE=python:3.11.14-slim-bookworm@sha256:…).
ARG PYTHON_IMAGE=python:3.11.14-slim-bookworm

FROM ${PYTHON_IMAGE} AS build
WORKDIR /src
COPY pyproject.toml README.md ./
COPY operator ./operator
COPY images/runtime ./images/runtime
# The modelsmith distribution is only here for its contract and API models (pydantic);
# --no-deps keeps the operator's own dependencies (kopf, kubernetes) out of the image.
RUN --mount=type=cache,target=/root/.cache/pip \
    pip wheel --no-deps --wheel-dir /wheels . ./images/runtime

# The requirement files of the dependency layers below, from pyproject.toml alone (see
# images/pyproject_deps.py). A file that comes out the same is the same layer, whatever
# changed in this stage: this is what lets the images share their layers.
FROM ${PYTHON_IMAGE} AS deps
COPY images/pyproject_deps.py images/runtime/pyproject.toml /tmp/deps/
RUN mkdir -p /deps/data /deps/trainer /deps/quantizer /deps/server && cd /tmp/deps \
 && python3 pyproject_deps.py pyproject.toml > /deps/common.txt \
 && python3 pyproject_deps.py pyproject.toml hf --minus project > /deps/hf.txt \
 && python3 pyproject_deps.py pyproject.toml data ray --minus project > /deps/data/image.txt \
 && python3 pyproject_deps.py pyproject.toml train ray data --minus project hf > /deps/trainer/image.txt \
 && python3 pyproject_deps.py pyproject.toml deepspeed --minus project > /deps/trainer/deepspeed.txt \
 && python3 pyproject_deps.py pyproject.toml quantize --minus project hf > /deps/quantizer/image.txt \
 && python3 pyproject_deps.py pyproject.toml serve --minus project hf > /deps/server/image.txt

# The runtime's own dependencies (pydantic, numpy, pyarrow, s3fs, tokenizers...): the
# parent of all four images, hence the same layers in each.
FROM ${PYTHON_IMAGE} AS common
RUN useradd --uid 10001 --create-home modelsmith
COPY --from=deps /deps/common.txt /tmp/deps/
RUN --mount=type=cache,target=/root/.cache/pip \
    pip install -r /tmp/deps/common.txt

# The torch layer (about 5.6 GB unpacked with its nvidia-* wheels and triton), then
# transformers and safetensors: the parent of the trainer, quantizer and server images,
# so these layers are built, pushed and pulled once. Keep the pin at what
# images/runtime/pyproject.toml's hf extra resolves to.
FROM common AS torch
RUN pip install --no-cache-dir torch==2.15.0
COPY --from=deps /deps/hf.txt /tmp/deps/
RUN --mount=type=cache,target=/root/.cache/pip \
    pip install -r /tmp/deps/hf.txt

# Each image: what only it needs, then the project itself. A source-only change reuses
# every layer up to the wheels and rebuilds only the last one.

FROM common AS data
COPY --from=deps /deps/data/image.txt /tmp/deps/
RUN --mount=type=cache,target=/root/.cache/pip \
    pip install -r /tmp/deps/image.txt && rm -rf /tmp/deps
COPY --from=build /wheels /wheels
RUN pip install --no-cache-dir --no-deps /wheels/*.whl && rm -rf /wheels
USER 10001
ENV PYTHONUNBUFFERED=1 HF_HUB_OFFLINE=1
ENTRYPOINT ["modelsmith-runtime"]

FROM torch AS trainer
COPY --from=deps /deps/trainer/image.txt /tmp/deps/
# DeepSpeed's sdist builds against the torch installed above: without build isolation,
# or pip would download a second torch into a build environment.
COPY --from=deps /deps/trainer/deepspeed.txt /tmp/deps/
RUN --mount=type=cache,target=/root/.cache/pip \
    pip install -r /tmp/deps/image.txt "setuptools>=77" wheel \
 && pip install --no-build-isolation -r /tmp/deps/deepspeed.txt \
 && rm -rf /tmp/deps
COPY --from=build /wheels /wheels
RUN pip install --no-cache-dir --no-deps /wheels/*.whl && rm -rf /wheels
USER 10001
ENV PYTHONUNBUFFERED=1 HF_HUB_OFFLINE=1
ENTRYPOINT ["modelsmith-runtime"]

FROM torch AS quantizer
COPY --from=deps /deps/quantizer/image.txt /tmp/deps/
RUN --mount=type=cache,target=/root/.cache/pip \
    pip install -r /tmp/deps/image.txt && rm -rf /tmp/deps
COPY --from=build /wheels /wheels
RUN pip install --no-cache-dir --no-deps /wheels/*.whl && rm -rf /wheels
USER 10001
ENV PYTHONUNBUFFERED=1 HF_HUB_OFFLINE=1
ENTRYPOINT ["modelsmith-runtime"]

FROM torch AS server
COPY --from=deps /deps/server/image.txt /tmp/deps/
RUN --mount=type=cache,target=/root/.cache/pip \
    pip install -r /tmp/deps/image.txt && rm -rf /tmp/deps
COPY --from=build /wheels /wheels
RUN pip install --no-cache-dir --no-deps /wheels/*.whl && rm -rf /wheels
USER 10001
# MODELSMITH_PORT is where the OpenAI, KServe v1/v2, health and /metrics routes listen.
ENV PYTHONUNBUFFERED=1 HF_HUB_OFFLINE=1 MODELSMITH_PORT=8080
EXPOSE 8080
ENTRYPOINT ["modelsmith-runtime"]
CMD ["serve"]
