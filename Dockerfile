# syntax=docker/dockerfile:1
# stockcast images. Targets:
#   runtime      the API (onnxruntime, no torch), non-root, HEALTHCHECK on /healthz  [default]
#   runtime-gpu  the API with onnxruntime-gpu (STOCKCAST_ORT_PROVIDER=cuda)
#   train        runtime + torch 2.13.0 for `stockcast train`
# The code runs from /app (not site-packages) so alembic/ and models/ sit beside it.
ARG PYTHON_VERSION=3.11

# ---- builder: wheels of every runtime dependency ------------------------------------------------
FROM python:${PYTHON_VERSION}-slim AS builder
RUN pip install --no-cache-dir --upgrade pip wheel
WORKDIR /src
COPY pyproject.toml README.md ./
COPY service ./service
COPY training ./training
RUN pip wheel --no-cache-dir --wheel-dir /wheels . \
 && rm -f /wheels/stockcast-*.whl

# ---- runtime: slim, no compilers, no torch --------------------------------------------------------
FROM python:${PYTHON_VERSION}-slim AS runtime
ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PYTHONPATH=/app \
    STOCKCAST_MODEL_DIR=/app/models \
    STOCKCAST_YFINANCE_CACHE_DIR=/app/var/yfinance-cache
RUN --mount=type=bind,from=builder,source=/wheels,target=/wheels \
    pip install --no-cache-dir --no-index --find-links=/wheels /wheels/*.whl \
 && useradd --create-home --uid 10001 stockcast
WORKDIR /app
COPY alembic.ini ./
COPY alembic ./alembic
COPY service ./service
# The shipped model; compose mounts a named volume here, which Docker seeds from this folder.
COPY models ./models
RUN mkdir -p /app/var && chown -R stockcast:stockcast /app/var /app/models
USER stockcast
EXPOSE 8000
HEALTHCHECK --interval=15s --timeout=3s --start-period=30s --retries=3 \
  CMD ["python", "-c", "import sys, urllib.request; sys.exit(urllib.request.urlopen('http://127.0.0.1:8000/healthz', timeout=2).status != 200)"]
CMD ["python", "-m", "service.cli", "serve", "--host", "0.0.0.0", "--port", "8000"]

# ---- runtime-gpu: the same API on onnxruntime-gpu (CUDA/cuDNN from their pip wheels) -------------
FROM runtime AS runtime-gpu
USER root
RUN pip uninstall -y onnxruntime \
 && pip install --no-cache-dir "onnxruntime-gpu[cuda,cudnn]==1.31.1"
USER stockcast
ENV STOCKCAST_ORT_PROVIDER=cuda

# ---- train: runtime + torch (the only image with torch) -------------------------------------------
FROM runtime AS train
USER root
# PyPI's Linux torch wheel brings CUDA; pass --build-arg TORCH_INDEX_URL=.../whl/cpu for CPU only.
ARG TORCH_INDEX_URL=""
RUN pip install --no-cache-dir ${TORCH_INDEX_URL:+--index-url "$TORCH_INDEX_URL" --extra-index-url https://pypi.org/simple} \
      "torch==2.13.0" "onnx==1.23.2" "onnxscript==0.7.2"
COPY training ./training
USER stockcast
CMD ["python", "-m", "service.cli", "train", "--universe", "top24"]
