# An aresdsm server image, built from this repository (aresdsm is not published on a package
# index). See docs/deploying.md, "Running a server in a container".
#
#   docker build -t aresdsm:0.1.0 .
#   docker run -d -p 7400:7400 -p 9400:9400 -v /etc/ares/cluster.toml:/etc/ares/cluster.toml:ro \
#       -v ares-s1-data:/var/lib/ares aresdsm:0.1.0 --id s1
#
# The base is pinned to Python 3.11 on Debian bookworm; for reproducible builds pin it by digest
# (python:3.11-slim-bookworm@sha256:...).
FROM python:3.11-slim-bookworm

ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1

# Install the package (with uvloop) from the source tree, then drop the sources.
WORKDIR /build
COPY pyproject.toml README.md ./
COPY src ./src
RUN pip install ".[fast]" && cd / && rm -rf /build

# An unprivileged user owns the data directory.
RUN useradd --system --uid 10001 --home-dir /var/lib/ares --shell /usr/sbin/nologin ares \
    && install -d -o ares -g ares -m 0750 /var/lib/ares \
    && install -d -m 0755 /etc/ares

USER ares
WORKDIR /var/lib/ares
VOLUME ["/var/lib/ares"]
# 7400: the aresdsm protocol; 9400: Prometheus /metrics, /healthz, /readyz
EXPOSE 7400 9400
HEALTHCHECK --interval=30s --timeout=10s --retries=3 \
    CMD python -c "import urllib.request as u; u.urlopen('http://127.0.0.1:9400/healthz', timeout=8)"

# SIGTERM (docker stop) makes the server finish its storage commits and exit 0.
STOPSIGNAL SIGTERM
# Each container adds its server id: `docker run ... aresdsm:0.1.0 --id s1`. The cluster file is
# mounted at /etc/ares/cluster.toml; its address for this server is the host's published one.
ENTRYPOINT ["ares", "-v", "server", "--cluster", "/etc/ares/cluster.toml", \
            "--data-dir", "/var/lib/ares", "--listen", "0.0.0.0:7400", \
            "--metrics-address", "0.0.0.0:9400"]
