# One image for every Voxline service; the command picks the service.
FROM python:3.11-slim-bookworm
RUN apt-get update && apt-get install -y --no-install-recommends espeak-ng && rm -rf /var/lib/apt/lists/*
WORKDIR /app
COPY pyproject.toml README.md ./
COPY proto ./proto
COPY voxline ./voxline
COPY services ./services
RUN pip install --no-cache-dir .
ENV VOXLINE_LOG_FORMAT=json VOXLINE_HEALTH_HOST=0.0.0.0 VOXLINE_HEALTH_PORT=9100
USER nobody
CMD ["python", "-m", "services.gateway"]
