"""Ray Train's trainer as every run of ours uses it (language model and codec alike):
its run settings, and a failure policy that never retries a user error.

Ray Train's controller actor unpickles the failure policy, and with it this module, so
it imports nothing of ours beyond ``music_gen.errors``. From the training package, the
policy had the controller import every training module (0.6 s of a core per run on
this machine; torch it imports anyway, through Ray's ``TorchConfig``).
"""

from __future__ import annotations

import signal

from music_gen.errors import MusicGenError


def fail_fast_trainer_class():
    """``TorchTrainer`` whose failure policy never retries a ``MusicGenError``.

    Ray Train's policy retries every worker failure up to ``max_failures``; a user or
    data error would fail the same way each time (a minute of retries, a screen of
    tracebacks). Ray takes no policy of ours through its public API, so the trainer
    hands the controller a wrapper of the default one (a private hook of Ray 2.60).
    """
    from ray.train.torch import TorchTrainer

    class FailFastTorchTrainer(TorchTrainer):
        interrupted = False  # set by the first Ctrl-C

        def _initialize_and_run_controller(self, **controller_init_kwargs):
            policy = controller_init_kwargs["failure_policy"]
            controller_init_kwargs["failure_policy"] = user_errors_fail_fast(policy)
            return super()._initialize_and_run_controller(**controller_init_kwargs)

        def _register_sigint_handler(self, controller):
            """Ctrl-C aborts the run (Ray's handler would ``sys.exit`` from inside the
            wait, which leaves the driver no way to say where the run stopped): the first
            asks the controller to abort and lets ``fit`` end, a second stops waiting."""

            def on_sigint(signum, frame):
                if self.interrupted:
                    raise KeyboardInterrupt
                self.interrupted = True
                controller.abort.remote()

            signal.signal(signal.SIGINT, on_sigint)

    return FailFastTorchTrainer


def user_errors_fail_fast(default):
    from ray.train.v2._internal.execution.failure_handling import (
        FailureDecision,
        FailurePolicy,
    )

    class UserErrorsFailFast(FailurePolicy):
        """Raise at once when any rank failed with a ``MusicGenError``; else ``default``."""

        def __init__(self, inner):
            super().__init__(inner.failure_config)
            self.inner = inner

        def make_decision(self, training_failed_error):
            failures = getattr(training_failed_error, "worker_failures", None) or {}
            if any(user_error(error) is not None for error in failures.values()):
                return FailureDecision.RAISE
            return self.inner.make_decision(training_failed_error)

    return UserErrorsFailFast(default)


def run_settings(tc, storage: str, metric: str, gpus: float = 1, callbacks=()) -> dict:
    """The ``scaling_config`` and ``run_config`` of a run ``tc`` (``cfg.train`` or
    ``cfg.codec.train``): its workers, name, storage, checkpoints kept by the lowest
    ``metric``, restarts and ``callbacks``; what training and codec training share."""
    from ray.train import CheckpointConfig, FailureConfig, RunConfig, ScalingConfig

    resources = {"CPU": tc.cpus_per_worker, **({"GPU": gpus} if tc.use_gpu else {})}
    return {
        "scaling_config": ScalingConfig(
            num_workers=tc.num_workers, use_gpu=tc.use_gpu, resources_per_worker=resources
        ),
        "run_config": RunConfig(
            name=tc.name,
            storage_path=storage,
            checkpoint_config=CheckpointConfig(
                num_to_keep=tc.keep_checkpoints,
                checkpoint_score_attribute=metric,
                checkpoint_score_order="min",
            ),
            failure_config=FailureConfig(max_failures=tc.max_failures),
            callbacks=list(callbacks),
        ),
    }


def user_error(error: BaseException | None) -> MusicGenError | None:
    """The ``MusicGenError`` behind a worker's failure (Ray wraps it), if that is what it is."""
    seen = set()
    while isinstance(error, BaseException) and id(error) not in seen:
        seen.add(id(error))
        if isinstance(error, MusicGenError):
            return error
        error = getattr(error, "cause", None) or error.__cause__
    return None


def worker_error(exc: Exception) -> MusicGenError:
    """Ray's ``TrainingFailedError`` -> one clear line naming the root cause."""
    failures = getattr(exc, "worker_failures", None) or {}
    rank, error = min(failures.items()) if failures else (None, None)
    error = error or getattr(exc, "controller_failure", None) or exc
    if (found := user_error(error)) is not None:
        try:
            return type(found)(*found.args)
        except TypeError:
            return MusicGenError(str(found))
    seen = set()
    while id(error) not in seen:  # the innermost cause names the problem
        seen.add(id(error))
        nested = getattr(error, "cause", None) or error.__cause__
        if not isinstance(nested, BaseException):
            break
        error = nested
    where = f"worker {rank}" if rank is not None else "the trainer"
    lines = [line for line in str(error).splitlines() if line.strip()]
    detail = lines[-1] if lines else type(error).__name__
    return MusicGenError(f"training failed on {where}: {type(error).__name__}: {detail}")
