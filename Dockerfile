# syntax=docker/dockerfile:1
# stockcast images; pick one with --target (docker compose does):
#   runtime      the API (onnxruntime, no torch), non-root, HEALTHCHECK on /healthz
#   runtime-gpu  the API with onnxruntime-gpu (STOCKCAST_ORT_PROVIDER=cuda)
#   train        the API's dependencies + the train and backtest extras (torch 2.13.0, onnx,
#                statsmodels, matplotlib), for `stockcast train` / `stockcast backtest`
# The code runs from /app (not site-packages) so alembic/ and models/ sit beside it; the
# dependencies live in a virtualenv, /opt/stockcast, built in a builder stage and copied whole.
# What goes into which image is pyproject.toml's business: runtime = [project] dependencies.
ARG PYTHON_VERSION=3.11

# ---- requirements: the dependency lists, read from pyproject.toml -------------------------------
# Each stage copies only the lists it installs: editing code, docs, tool settings or another
# extra never reinstalls its dependencies.
FROM python:${PYTHON_VERSION}-slim AS requirements
COPY pyproject.toml /src/
RUN mkdir /requirements && python -c "import tomllib; \
project = tomllib.load(open('/src/pyproject.toml', 'rb'))['project']; \
lists = {'runtime': project['dependencies'], **project['optional-dependencies']}; \
[open(f'/requirements/{name}.txt', 'w').write('\n'.join(reqs) + '\n') for name, reqs in lists.items()]"

# ---- builder: the runtime dependencies in a virtualenv, then its pip and setuptools removed -------
FROM python:${PYTHON_VERSION}-slim AS builder
RUN python -m venv /opt/stockcast \
 && /opt/stockcast/bin/pip install --no-cache-dir --upgrade pip
# (COPY, not RUN --mount=from=requirements: under Debian's podman 4.3 that mount came up empty.)
COPY --from=requirements /requirements/runtime.txt /requirements/
RUN /opt/stockcast/bin/pip install --no-cache-dir -r /requirements/runtime.txt \
 && /opt/stockcast/bin/pip uninstall -y pip setuptools

# ---- builder-train: the same venv + the train and backtest extras (torch only here) ---------------
FROM builder AS builder-train
# PyPI's Linux torch wheel brings CUDA; pass --build-arg TORCH_INDEX_URL=.../whl/cpu for CPU only.
ARG TORCH_INDEX_URL=""
COPY --from=requirements /requirements/train.txt /requirements/backtest.txt /requirements/
RUN /opt/stockcast/bin/python -m ensurepip \
 && /opt/stockcast/bin/python -m pip install --no-cache-dir \
      ${TORCH_INDEX_URL:+--index-url "$TORCH_INDEX_URL" --extra-index-url https://pypi.org/simple} \
      -r /requirements/train.txt -r /requirements/backtest.txt \
 && /opt/stockcast/bin/python -m pip uninstall -y pip setuptools

# ---- app: what every image shares (user, environment, folders) ------------------------------------
FROM python:${PYTHON_VERSION}-slim AS app
ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PYTHONPATH=/app \
    PATH=/opt/stockcast/bin:$PATH \
    STOCKCAST_MODEL_DIR=/app/models \
    STOCKCAST_YFINANCE_CACHE_DIR=/app/var/yfinance-cache
RUN useradd --create-home --uid 10001 stockcast
WORKDIR /app
RUN mkdir -p /app/var && chown stockcast:stockcast /app/var

# ---- train: the train venv and the code (training/ too); its dependency layer never waits on code -
FROM app AS train
COPY --from=builder-train /opt/stockcast /opt/stockcast
COPY alembic.ini ./
COPY alembic ./alembic
COPY --chown=stockcast:stockcast models ./models
COPY service ./service
COPY training ./training
USER stockcast
CMD ["python", "-m", "service.cli", "train", "--universe", "top24"]

# ---- runtime: slim; no compilers, pip, torch, statsmodels, matplotlib or pyarrow -----------------
FROM app AS runtime
COPY --from=builder /opt/stockcast /opt/stockcast
COPY alembic.ini ./
COPY alembic ./alembic
# The shipped model; compose mounts a named volume here, which Docker seeds from this folder.
COPY --chown=stockcast:stockcast models ./models
COPY service ./service
USER stockcast
EXPOSE 8000
HEALTHCHECK --interval=15s --timeout=3s --start-period=30s --retries=3 \
  CMD ["python", "-c", "import sys, urllib.request; sys.exit(urllib.request.urlopen('http://127.0.0.1:8000/healthz', timeout=2).status != 200)"]
CMD ["python", "-m", "service.cli", "serve", "--host", "0.0.0.0", "--port", "8000"]

# ---- runtime-gpu: the same API on onnxruntime-gpu (CUDA/cuDNN from their pip wheels) -------------
FROM runtime AS runtime-gpu
USER root
RUN python -m ensurepip \
 && python -m pip uninstall -y onnxruntime \
 && python -m pip install --no-cache-dir "onnxruntime-gpu[cuda,cudnn]==1.31.1" \
 && python -m pip uninstall -y pip setuptools
USER stockcast
ENV STOCKCAST_ORT_PROVIDER=cuda
