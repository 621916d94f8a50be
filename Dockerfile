# authsvc production image: installs exactly the pinned dependencies the CI tested.
FROM python:3.11-slim AS base
ENV PYTHONDONTWRITEBYTECODE=1 PYTHONUNBUFFERED=1 PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 AUTHSVC_ENV=production
WORKDIR /app
COPY requirements.lock ./
RUN pip install -r requirements.lock
COPY pyproject.toml README.md openapi.yaml ./
COPY authsvc ./authsvc
COPY migrations ./migrations
# Editable install: the code runs from /app, beside migrations/ and openapi.yaml.
RUN pip install --no-deps -e . \
    && useradd --system --home /app authsvc && mkdir -p /app/var && chown authsvc /app/var
USER authsvc
EXPOSE 8000
HEALTHCHECK --interval=30s --timeout=3s CMD python -c \
    "import urllib.request; urllib.request.urlopen('http://127.0.0.1:8000/readyz', timeout=2)"
# Run `authsvc db upgrade` once per release (a job or init container), then:
CMD ["authsvc", "serve", "--host", "0.0.0.0", "--port", "8000"]
