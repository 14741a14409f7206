# One image for web and worker. CPU torch by default; on a GPU host, build with
# --build-arg TORCH_INDEX=https://download.pytorch.org/whl/cu124 for a CUDA wheel.
FROM python:3.11-slim
ARG TORCH_INDEX=https://download.pytorch.org/whl/cpu
ENV PYTHONDONTWRITEBYTECODE=1 PYTHONUNBUFFERED=1
WORKDIR /app
COPY requirements.txt .
RUN pip install --no-cache-dir --extra-index-url ${TORCH_INDEX} -r requirements.txt
COPY . .
RUN useradd --create-home xray && mkdir -p /data && chown xray /data
USER xray
ENV XRAY_VAR_DIR=/data XRAY_MEDIA_ROOT=/data/media
EXPOSE 8000
CMD ["sh", "-c", "python manage.py migrate --noinput && python manage.py setup_models && gunicorn xrayweb.wsgi -b 0.0.0.0:8000 -w 2 --timeout 60"]
