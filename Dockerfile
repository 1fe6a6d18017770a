# One image for every scale-out role (api, scp, worker, migrate); the role is the command.
# Build: docker build -t remote-dx .      Run: see docker-compose.yml and docs/deployment.md
# Two stages: node builds the browser viewer (viewer/dist: Vite + Cornerstone3D, codec wasm);
# only the built files go into the Python image, which serves them at / (viewer_static.py).

# --- the viewer: the locked packages, then `npm run build` (tsc --noEmit && vite build) ---------
FROM node:20-bookworm-slim AS viewer
WORKDIR /viewer
# npm install --no-save, not npm ci: npm 11's ci refuses the lock it wrote (platform-optional
# packages missing); --no-save installs what the lock names without rewriting it.
COPY viewer/package.json viewer/package-lock.json ./
RUN npm install --no-save --no-audit --no-fund
# .dockerignore keeps the host's viewer/node_modules and viewer/dist out of the context.
COPY viewer/ ./
RUN npm run build

# --- the hub -------------------------------------------------------------------------------------
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

# The built viewer; RDX_VIEWER_DIST (below) tells the installed package where it is.
COPY --from=viewer /viewer/dist ./viewer/dist

# `--demo` seeding looks for sample_studies/demo_network.yaml in the working directory.
COPY sample_studies/demo_network.yaml ./sample_studies/demo_network.yaml

# Never run as root; the only local state in scale-out is the (unused) data dir.
RUN useradd --system --uid 10001 --home-dir /app --shell /usr/sbin/nologin rdx \
    && mkdir -p /app/var \
    && chown rdx:rdx /app/var
USER rdx

ENV RDX_DATA_DIR=/app/var \
    RDX_VIEWER_DIST=/app/viewer/dist \
    RDX_HTTP_HOST=0.0.0.0 \
    RDX_DICOM_HOST=0.0.0.0 \
    RDX_EMBEDDED_WORKER=false

# 8000: web/API (`remote-dx api`); 11112: DICOM receiver (`remote-dx scp`).
EXPOSE 8000 11112

# Scale-out default: the API alone. Each compose service overrides the command
# (`remote-dx scp`, `remote-dx worker`, `remote-dx migrate`); `remote-dx serve` is the
# single-process embedded mode, not meant for this image.
CMD ["remote-dx", "api"]
