"""Training: a Ray Train V2 ``TorchTrainer`` around a plain PyTorch loop.

Read in this order:

- ``step.py``: one step in plain PyTorch (curriculum, schedule, EMA, ``train_step``,
  validation); the loss itself is ``pipelines/losses.py``, shared with evaluation;
- ``parallel.py``: DDP/FSDP wrapping, whole weights and optimizer state by name;
- ``worker.py``: ``train_loop_per_worker``, setup then a flat loop;
- ``resume.py``: what a re-run may change (``RESUMABLE``) and the check that refuses
  the rest, before any worker starts;
- ``driver.py``: fail-fast checks (``plan_run``), the Ray Data splits, the trainer and
  ``train()``, which also logs the final model to MLflow;
- ``samples.py``: generated audio and spectrograms logged during training.

Checkpoints (``pipelines/checkpoints.py``) are our model directory plus optimizer
state, step and data position, with a marker written once all of it is stored; Ray
keeps the best ``train.keep_checkpoints`` by validation loss and always the latest. A
re-run with the same name and storage resumes from the newest complete checkpoint on
disk (which can be newer than the last one Ray registered: it registers on its next
poll of the workers).
"""

from music_gen.pipelines.losses import (
    Batch,
    codebook_losses,
    crop_codes,
    delay_inputs,
    make_batch,
    mean_loss,
)
from music_gen.pipelines.shards import choose_val_sources, is_validation
from music_gen.pipelines.train.driver import (
    Plan,
    TrainingInterrupted,
    build_datasets,
    build_trainer,
    plan_run,
    train,
    with_absolute_paths,
    worker_error,
)
from music_gen.pipelines.train.parallel import full_weights, load_optimizer_state, optimizer_state
from music_gen.pipelines.train.step import (
    COLUMNS,
    EMA,
    TrainModule,
    build_optimizer,
    condition_dropout,
    iter_local_batches,
    lr_factor,
    mg_weights_into,
    named_trainable,
    segment_frames,
    set_lr,
    train_step,
    validate,
)
from music_gen.pipelines.train.worker import VAL_METRIC, WARM_STEPS, train_loop_per_worker

__all__ = [
    "COLUMNS", "EMA", "VAL_METRIC", "WARM_STEPS", "Batch", "Plan", "TrainModule",
    "TrainingInterrupted",
    "build_datasets", "build_optimizer", "build_trainer", "choose_val_sources",
    "codebook_losses", "condition_dropout", "crop_codes", "delay_inputs", "full_weights",
    "is_validation", "iter_local_batches", "load_optimizer_state", "lr_factor", "make_batch",
    "mean_loss", "mg_weights_into", "named_trainable", "optimizer_state", "plan_run",
    "segment_frames", "set_lr", "train", "train_loop_per_worker", "train_step", "validate",
    "with_absolute_paths", "worker_error",
]  # fmt: skip
