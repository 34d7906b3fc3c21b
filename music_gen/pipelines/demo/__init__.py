"""``music-gen demo``: the whole platform end to end, offline, in stages.

Each stage calls the platform's own API, the one its command calls:

=====  ==========  ==================================================================
stage  name        what runs (the command that does the same)
=====  ==========  ==================================================================
1      synth       captioned synthetic music (``data synth``)
2      codec       an EnCodec codec trained with Ray Train (``codec train``), or, the
                   default of the quick sizes, k-means calibration (``codec calibrate``)
3      tokenize    the audio to Parquet shards of codes with Ray Data (``data tokenize``)
4      train       a small language model with Ray Train and MLflow (``train``)
5      tune        a 2-trial Ray Tune sweep fine-tuning it over the learning rate (``tune``)
6      evaluate    validation loss, prompt adherence and FAD of the trained model and of
                   the sweep's best (``evaluate``)
7      registry    both registered, the better one promoted to ``production`` behind the
                   registry's gate (``registry register``, ``registry promote``)
8      serve       Ray Serve from ``models:/music-gen@production`` (``serve``), prompts
                   sent over HTTP on the loopback, each answer's audio and spectrogram
                   written, the answers classified by ear (the audio classifier)
=====  ==========  ==================================================================

Everything lives in the work directory (default ``work/demo``): the data, the codec,
the runs, MLflow's sqlite store (``mlflow.db``) and what the server answered. A stage
that finished writes ``stages/<name>.json`` (its figures and outputs); a second run
skips every stage whose record and outputs are there, saying so, and re-runs the rest
(a stage after one that ran again starts afresh). ``--keep-serving`` leaves the server
up until Ctrl-C. Ctrl-C at any point stops what runs: the Serve app, and the Ray
cluster when the demo started it, are shut down.

The package's modules: ``sizes`` (names and how big each stage is), ``runner`` (the
``Demo``: stage records, reuse, the environment, clean-up), ``stages`` (what each stage
runs), ``serving`` (the Serve app and the prompts sent to it), ``client`` (the HTTP
calls), ``progress`` (the bars and the stage logs) and ``summary`` (the lines printed).
"""

from __future__ import annotations

from music_gen.errors import MusicGenError, UsageError
from music_gen.pipelines.demo.progress import StageOutput, Ticker
from music_gen.pipelines.demo.runner import Demo, DemoInterrupted, Paths, run_demo
from music_gen.pipelines.demo.sizes import (
    APP_NAME,
    CLASSES,
    DEFAULT,
    EXPERIMENT,
    MODEL_NAME,
    QUICK,
    SIZES,
    STAGES,
    SYNTH_MODEL,
    THREADS,
    WORKER_CPUS,
    Sizes,
)

__all__ = [
    "APP_NAME", "CLASSES", "DEFAULT", "EXPERIMENT", "MODEL_NAME", "QUICK", "SIZES", "STAGES",
    "SYNTH_MODEL", "THREADS", "WORKER_CPUS", "Demo", "DemoInterrupted", "MusicGenError",
    "Paths", "Sizes", "StageOutput", "Ticker", "UsageError", "run_demo",
]  # fmt: skip
