"""Preemption: SIGTERM / SIGINT save a checkpoint at the next step boundary and stop training cleanly.

Clusters announce preemption with SIGTERM (Slurm, Kubernetes, torchrun forward it to every process); Ctrl-C sends
SIGINT. The signal handler only records the signal; at the end of the current optimizer step the callback asks
the Trainer to save a checkpoint and stop, on every process together. A second signal gets the default behaviour
(stop now). ``run_rm`` then raises :class:`TrainingInterrupted`, and relaunching the same command with
``resume_from_checkpoint=latest`` continues exactly where it stopped.
"""

from __future__ import annotations

import logging
import os
import signal
import threading

from transformers import TrainerCallback

from discorm.train.collective import any_process

logger = logging.getLogger(__name__)

STOP_SIGNALS = (signal.SIGTERM, signal.SIGINT)


class PreemptionCallback(TrainerCallback):
    """Turns SIGTERM / SIGINT into "save a checkpoint and stop" at the next step boundary."""

    def __init__(self, signals: tuple[int, ...] = STOP_SIGNALS):
        self.signals = signals
        self.received: int | None = None  # the signal this process got
        self.stopped_at: int | None = None  # the step whose checkpoint was saved on the way out
        self._previous: dict[int, object] = {}

    def _handle(self, signum, frame) -> None:
        if self.received is not None:  # a second signal: do what would have happened without us
            previous = self._previous.get(signum)
            self._restore()
            if callable(previous):
                previous(signum, frame)  # e.g. Python's SIGINT handler: KeyboardInterrupt
            else:
                os.kill(os.getpid(), signum)  # the restored disposition: default (terminate) or ignore
            return
        self.received = signum
        logger.warning("%s received: saving a checkpoint at the end of this step, then stopping (send it again to "
                       "stop at once)", signal.Signals(signum).name)

    def _restore(self) -> None:
        for signum, handler in self._previous.items():
            signal.signal(signum, handler if handler is not None else signal.SIG_DFL)
        self._previous.clear()

    def on_train_begin(self, args, state, control, **kwargs):
        if threading.current_thread() is threading.main_thread():  # signal handlers live in the main thread
            self._previous = {signum: signal.getsignal(signum) for signum in self.signals}
            for signum in self.signals:
                signal.signal(signum, self._handle)

    def on_step_end(self, args, state, control, **kwargs):
        if any_process(self.received is not None, args.device):
            control.should_save = True
            control.should_training_stop = True
            self.stopped_at = state.global_step
            self.received = self.received or signal.SIGTERM  # a signal that reached another process

    def on_train_end(self, args, state, control, **kwargs):
        self._restore()
