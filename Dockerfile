# syntax=docker/dockerfile:1
FROM python:3.11-slim AS build
WORKDIR /src
COPY pyproject.toml README.md ./
COPY gateway ./gateway
COPY admin ./admin
RUN pip wheel --no-cache-dir --wheel-dir /wheels .

FROM python:3.11-slim
RUN useradd --system --uid 10001 --no-create-home --shell /usr/sbin/nologin gateway
COPY --from=build /wheels /wheels
RUN pip install --no-cache-dir /wheels/*.whl && rm -rf /wheels
USER gateway
WORKDIR /home/gateway
ENV PYTHONUNBUFFERED=1 \
    RPA_GATEWAY_LISTEN=0.0.0.0:8080 \
    RPA_GATEWAY_ADMIN_LISTEN=0.0.0.0:8081
# The gateway (public) and the admin listener (keep it internal).
EXPOSE 8080 8081
HEALTHCHECK --interval=10s --timeout=3s --start-period=10s --retries=3 \
    CMD ["python", "-c", "import urllib.request,sys; sys.exit(0 if urllib.request.urlopen('http://127.0.0.1:8080/_gateway/health', timeout=2).status == 200 else 1)"]
CMD ["rpa-gateway", "serve"]
