# One image for every RadDraft part; docker-compose picks the command.
FROM python:3.11-slim-bookworm
RUN apt-get update \
 && apt-get install -y --no-install-recommends dcmtk libgomp1 \
 && rm -rf /var/lib/apt/lists/*
WORKDIR /app
COPY pyproject.toml README.md ./
COPY raddraft raddraft
COPY dicom_listener dicom_listener
COPY worker worker
COPY models models
COPY report_drafts report_drafts
COPY web web
COPY peers peers
COPY orders orders
COPY migrations migrations
RUN pip install --no-cache-dir '.[model]'
ENV RADDRAFT_DATA_DIR=/data PYTHONUNBUFFERED=1
VOLUME /data
ENTRYPOINT ["raddraft"]
