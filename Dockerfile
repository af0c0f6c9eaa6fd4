# The image of every service of the stack: the edge, the workers and Flower.
FROM python:3.11-slim

ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    UV_PYTHON_DOWNLOADS=never \
    UV_NO_CACHE=1 \
    UV_PROJECT_ENVIRONMENT=/app/.venv \
    PATH=/app/.venv/bin:$PATH

WORKDIR /app
RUN useradd --create-home --uid 10001 app

# Extras to install beside the service itself; docker-compose.yml asks for
# "flower" in the image its Flower service runs.
ARG EXTRAS=""

# uv at the version and hashes bin/uv uses; then exactly what uv.lock names.
COPY .ci/uv.txt /tmp/uv.txt
RUN pip install --require-hashes --no-deps -r /tmp/uv.txt && rm /tmp/uv.txt
COPY pyproject.toml uv.lock README.md LICENSE ./
COPY api ./api
COPY worker ./worker
COPY cli ./cli
# --compile-bytecode: the image runs as a user that cannot write .pyc files, so
# without them every process would compile its imports from source at start.
RUN uv sync --locked --no-editable --compile-bytecode --python /usr/local/bin/python \
      ${EXTRAS:+--extra "$EXTRAS"}

USER app
EXPOSE 8000 9100
# The edge; docker-compose.yml gives every other service its own command.
# GUNICORN_CMD_ARGS overrides api/gunicorn_conf.py's settings (bind, workers).
ENV GUNICORN_CMD_ARGS="--bind=0.0.0.0:8000"
CMD ["gunicorn", "-c", "python:api.gunicorn_conf", "api.app:create_app()"]
