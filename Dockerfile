# The adapters image: the CLI, the API server and the compression worker.
#   docker build -t adapters .                                   (CPU torch)
#   docker build -t adapters:cuda --build-arg TORCH_INDEX=https://download.pytorch.org/whl/cu128 .
FROM python:3.11-slim

ARG TORCH_INDEX=https://download.pytorch.org/whl/cpu
ARG TORCH_VERSION=2.13.0

ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1

RUN useradd --create-home --uid 10001 adapters
WORKDIR /src

# torch first, from the index that matches the hardware; the project's own dependencies then leave it be.
RUN pip install --index-url "${TORCH_INDEX}" "torch==${TORCH_VERSION}"

COPY pyproject.toml README.md ./
COPY registry registry
COPY compress compress
COPY api api
COPY cli cli
COPY migrations migrations
RUN pip install . && rm -rf /src

USER adapters
WORKDIR /home/adapters
ENV ADAPTERS_HOME=/home/adapters/.adapters \
    ADAPTERS_API_HOST=0.0.0.0 \
    ADAPTERS_API_PORT=8080
EXPOSE 8080
CMD ["adapters", "serve"]
