# The image compose.yaml runs: one for every service (`mlwarden run SERVICE`).
FROM python:3.11-slim
RUN pip install --no-cache-dir uv==0.13.9
WORKDIR /app
COPY pyproject.toml uv.lock README.md ./
COPY shared shared
COPY services services
COPY mlwarden mlwarden
RUN uv sync --frozen --no-dev && ln -s /app/.venv/bin/mlwarden /usr/local/bin/mlwarden
ENV MLW_DATA_DIR=/var/lib/mlwarden
USER 10001
ENTRYPOINT []
