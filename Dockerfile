# CUDA-capable image of hiresd. Build: docker build -t hiresd .
# Run:   docker run --gpus all -p 7860:7860 -v /path/to/models:/models hiresd
FROM nvidia/cuda:12.8.1-runtime-ubuntu24.04
RUN apt-get update && apt-get install -y --no-install-recommends python3 python3-venv python3-pip \
    && rm -rf /var/lib/apt/lists/*
RUN useradd --create-home --uid 1000 hiresd
WORKDIR /app
COPY --chown=hiresd:hiresd pyproject.toml README.md ./
COPY --chown=hiresd:hiresd server ./server
COPY --chown=hiresd:hiresd schemas ./schemas
COPY --chown=hiresd:hiresd pipeline ./pipeline
COPY --chown=hiresd:hiresd upscalers ./upscalers
RUN python3 -m venv /opt/venv && /opt/venv/bin/pip install --no-cache-dir . \
    && mkdir -p /models /data /outputs && chown hiresd:hiresd /models /data /outputs
USER hiresd
ENV HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1
VOLUME ["/models", "/data", "/outputs"]
EXPOSE 7860
CMD ["/opt/venv/bin/python", "-m", "server", "--host", "0.0.0.0", "--port", "7860", \
     "--models-dir", "/models", "--data-dir", "/data", "--outputs-dir", "/outputs"]
