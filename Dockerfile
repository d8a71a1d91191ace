# syntax=docker/dockerfile:1
# Ferry's three images from one recipe; they differ only in the pyproject extra they install and their
# entry point:
#   operator   kopf + the Kubernetes client, no ML libraries (import-linter enforces it)
#   runtime    ONNX Runtime and the server, no TensorFlow; also the storage initializer (ferry-fetch)
#   optimizer  TensorFlow, tf2onnx and ONNX Runtime for the optimization Jobs; torch (CPU use only),
#              transformers and onnxruntime-genai's model builder for generative models
# Build from the repository root:
#   podman build --target runtime --build-arg COMPONENT=runtime -t ferry-runtime:0.1.0 .
# BASE_IMAGE defaults to the official Python image; with no registry (the devcluster),
# scripts/build-images.sh passes a Debian bookworm base made locally (its python3 is 3.11 too).
ARG BASE_IMAGE=docker.io/library/python:3.11-slim-bookworm

FROM ${BASE_IMAGE} AS deps
# Which pyproject extra to install: operator, runtime or optimizer.
ARG COMPONENT
# Where the build machine reaches PyPI through a TLS-inspecting proxy, the build script mounts its CA
# bundle and names it here; unset everywhere else.
ARG PIP_CERT=""
# A virtual environment is the unit we copy into the final stage: no compilers or pip caches ship.
RUN test -n "$COMPONENT" || { echo "set --build-arg COMPONENT=operator|runtime|optimizer" >&2; exit 2; } \
 && python3 -m venv /opt/ferry
COPY pyproject.toml constraints.txt scripts/image_requirements.py scripts/cuda_stubs.py /src/
# Only the dependencies, from pyproject.toml's lists, live in this stage: it is reused until they change.
# Ferry's own code is added in the final stage as one small layer on top of this one, so a code change
# neither re-downloads ONNX Runtime or TensorFlow nor stores another copy of them (a copy of the optimizer's
# 1.8 GB environment per source change once filled a CI machine's disk). image_requirements.py says which
# extras each image carries; what it lists in no-deps.txt (torch, for the optimizer's generative builds) is
# installed without its GPU-only dependencies, then with its CPU ones, and cuda_stubs.py (compiled here,
# with Debian's gcc, which stays in this stage) writes stubs of the CUDA libraries it links but never calls.
RUN /opt/ferry/bin/python /src/image_requirements.py "$COMPONENT" /src/pyproject.toml /src \
 && /opt/ferry/bin/pip install ${PIP_CERT:+--cert "$PIP_CERT"} --no-cache-dir --upgrade pip \
 && /opt/ferry/bin/pip install ${PIP_CERT:+--cert "$PIP_CERT"} --no-cache-dir -c /src/constraints.txt \
    -r /src/requirements.txt \
 && if [ -s /src/no-deps.txt ]; then \
      /opt/ferry/bin/pip install ${PIP_CERT:+--cert "$PIP_CERT"} --no-cache-dir --no-deps -c /src/constraints.txt \
        -r /src/no-deps.txt \
   && for dist in $(sed 's/[^A-Za-z0-9._-].*//' /src/no-deps.txt); do \
        /opt/ferry/bin/python /src/image_requirements.py --cpu-dependencies "$dist"; done > /src/cpu-deps.txt \
   && /opt/ferry/bin/pip install ${PIP_CERT:+--cert "$PIP_CERT"} --no-cache-dir -c /src/constraints.txt \
        -r /src/cpu-deps.txt \
   && DEBIAN_FRONTEND=noninteractive apt-get update -qq \
   && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends gcc libc6-dev binutils \
   && /opt/ferry/bin/python /src/cuda_stubs.py /opt/ferry/lib/python3.11/site-packages/torch/lib \
   && /opt/ferry/bin/python -c "import torch; assert not torch.cuda.is_available(); print('torch', torch.__version__)"; \
    fi \
 && find /opt/ferry -name __pycache__ -prune -exec rm -rf {} +

FROM deps AS wheel
ARG PIP_CERT=""
COPY README.md /src/
COPY operator /src/operator
COPY runtime /src/runtime
COPY optimizer /src/optimizer
COPY devcluster/ferry_devcluster /src/devcluster/ferry_devcluster
RUN /opt/ferry/bin/pip wheel ${PIP_CERT:+--cert "$PIP_CERT"} --no-cache-dir --no-deps --wheel-dir /wheels /src

FROM ${BASE_IMAGE} AS final
ARG COMPONENT
LABEL org.opencontainers.image.title="ferry-${COMPONENT}" \
      org.opencontainers.image.source="https://ferry.dev" \
      org.opencontainers.image.licenses="Apache-2.0"
COPY --from=deps /opt/ferry /opt/ferry
COPY --from=wheel /wheels /tmp/wheels
RUN /opt/ferry/bin/pip install --no-cache-dir --no-deps --no-index --no-compile /tmp/wheels/*.whl \
 && rm -rf /tmp/wheels
ENV PATH=/opt/ferry/bin:$PATH \
    PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1
# Non-root, numeric so Kubernetes can verify runAsNonRoot without a passwd lookup.
USER 65532:65532
WORKDIR /tmp

FROM final AS operator
# Arguments (the chart passes --namespace or --all-namespaces) replace CMD, not the entry point.
ENTRYPOINT ["ferry-operator"]
CMD ["--all-namespaces"]

FROM final AS runtime
ENTRYPOINT ["ferry-runtime"]

FROM final AS optimizer
ENTRYPOINT ["ferry-optimize"]
