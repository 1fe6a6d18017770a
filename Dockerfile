# One image for every scale-out role (api, scp, worker, migrate); the role is the command.
# Build: docker build -t remote-dx .      Run: see docker-compose.yml and docs/deployment.md
FROM python:3.11-slim

ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1

WORKDIR /app

# A CJK font, so ECG printouts and report PDFs show Chinese names instead of "?".
RUN apt-get update \
    && apt-get install -y --no-install-recommends fonts-wqy-microhei fontconfig \
    && rm -rf /var/lib/apt/lists/*

# Dependencies are all wheels (pydicom, pylibjpeg codecs, psycopg[binary], …): no compiler.
COPY pyproject.toml README.md ./
COPY src ./src
RUN pip install . && rm -rf src

# `--demo` seeding looks for sample_studies/demo_network.yaml in the working directory.
COPY sample_studies/demo_network.yaml ./sample_studies/demo_network.yaml

# Never run as root; the only local state in scale-out is the (unused) data dir.
RUN useradd --system --uid 10001 --home-dir /app --shell /usr/sbin/nologin rdx \
    && mkdir -p /app/var \
    && chown rdx:rdx /app/var
USER rdx

ENV RDX_DATA_DIR=/app/var \
    RDX_HTTP_HOST=0.0.0.0 \
    RDX_DICOM_HOST=0.0.0.0 \
    RDX_EMBEDDED_WORKER=false

# 8000: web/API (`remote-dx api`); 11112: DICOM receiver (`remote-dx scp`).
EXPOSE 8000 11112

# Scale-out default: the API alone. Each compose service overrides the command
# (`remote-dx scp`, `remote-dx worker`, `remote-dx migrate`); `remote-dx serve` is the
# single-process embedded mode, not meant for this image.
CMD ["remote-dx", "api"]
