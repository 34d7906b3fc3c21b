# The music-gen image: the cluster's nodes, Ray Jobs and `serve deploy` all run it.
#   docker build -t music-gen:latest .
#   docker run --gpus all -p 8000:8000 music-gen:latest serve --model models:/music-gen@production --host 0.0.0.0
# Built on Ray's own GPU image for the pinned Ray and Python (CUDA, NCCL, a `ray` user).
FROM rayproject/ray:2.60.0-py311-gpu

ENV RAY_USAGE_STATS_ENABLED=0 \
    MLFLOW_DISABLE_TELEMETRY=true \
    HF_HUB_DISABLE_TELEMETRY=1 \
    PYTHONUNBUFFERED=1 \
    MUSIC_GEN_WORK_DIR=/home/ray/work

USER root
# libsndfile reads WAV/FLAC/OGG/MP3; ffmpeg is torchaudio's fallback for other codecs.
RUN apt-get update \
    && apt-get install -y --no-install-recommends libsndfile1 ffmpeg curl \
    && rm -rf /var/lib/apt/lists/*
USER ray
WORKDIR /home/ray/music-gen

# Dependencies first (cached while only the code changes), exactly as the lock pins them.
COPY --chown=ray:ray pyproject.toml README.md constraints.txt ./
COPY --chown=ray:ray music_gen/__init__.py music_gen/__init__.py
RUN pip install --no-cache-dir -c constraints.txt .

COPY --chown=ray:ray music_gen music_gen
COPY --chown=ray:ray configs configs
RUN pip install --no-cache-dir --no-deps . && mkdir -p /home/ray/work

EXPOSE 8000 8265 5000
# The server's health route (music-gen serve / serve deploy of music_gen.serve.app:build_app).
HEALTHCHECK --interval=30s --timeout=5s --start-period=120s --retries=3 \
    CMD curl -fsS http://127.0.0.1:8000/healthz || exit 1
ENTRYPOINT ["music-gen"]
CMD ["--help"]
