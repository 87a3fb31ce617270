# quiesce as a standalone image (for an ops Machine, `fly machine run`, or CI).
# For the release command itself, install quiesce into your app's image instead (see README):
# release_command runs in the image being deployed.
FROM python:3.11-slim
ENV PYTHONDONTWRITEBYTECODE=1 PYTHONUNBUFFERED=1 PIP_NO_CACHE_DIR=1
WORKDIR /src
COPY pyproject.toml README.md ./
COPY quiesce ./quiesce
RUN pip install . && python -m compileall -q /usr/local/lib/python3.11/site-packages/quiesce \
    && useradd --create-home quiesce
USER quiesce
ENTRYPOINT ["quiesce"]
CMD ["status"]
