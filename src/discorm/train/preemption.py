"""What every process of a run decides together at the end of each optimizer step, in one all-reduce: stop on a
signal (SIGTERM from a scheduler, SIGINT from Ctrl-C) after saving a checkpoint, stop on a non-finite training
loss, and the training accuracy of all processes for the log.

The signal handler only records the signal; at the end of the step the Trainer is asked to save a checkpoint
and stop, on every process together, and ``run_rm`` raises :class:`TrainingInterrupted` (relaunching with
``resume_from_checkpoint=latest`` continues exactly). A second signal gets the default behaviour (stop now).
"""

from __future__ import annotations

import logging
import os
import signal
import threading

import torch
from accelerate.utils import reduce
from transformers import TrainerCallback

from discorm.errors import TrainingError

logger = logging.getLogger(__name__)

STOP_SIGNALS = (signal.SIGTERM, signal.SIGINT)


class StepSync(TrainerCallback):
    """Collects, per process, the non-finite losses and the pairwise accuracy of each micro-batch (on the device,
    without a host sync) and a stop signal; ``on_step_end`` sums them over processes in one all-reduce."""

    def __init__(self, device: torch.device, skip_nonfinite: bool = False, signals: tuple[int, ...] = STOP_SIGNALS):
        self.device, self.skip_nonfinite, self.signals = device, skip_nonfinite, signals
        self.received: int | None = None  # the signal this process got
        self.stopped_at: int | None = None  # the step whose checkpoint was saved on the way out
        self.skipped = 0  # batches skipped for a non-finite loss (skip_nonfinite_batches)
        self._previous: dict[int, object] = {}
        self._local = torch.zeros(3, device=device)  # this step: non-finite batches, correct, pairs
        self._batches: list[tuple[torch.Tensor, list[str] | None, int]] = []  # this step: loss, rows, step
        self._since_log = torch.zeros(2, dtype=torch.float64)  # all processes since the last log: correct, pairs

    # ------------------------------------------------------------------ per micro-batch (compute_loss)
    def record(self, loss: torch.Tensor, chosen: torch.Tensor, rejected: torch.Tensor, sources: list[str] | None,
               step: int, model: torch.nn.Module) -> torch.Tensor:
        """Count one training micro-batch; returns the loss to back-propagate. With skip_nonfinite_batches a
        nan/inf loss (a host sync, only then) gives a zero gradient to every parameter and is counted; its value
        stays non-finite, so the Trainer's logging_nan_inf_filter leaves it out of the logged loss."""
        with torch.no_grad():
            correct = (chosen > rejected).float().sum() + 0.5 * (chosen == rejected).float().sum()
            self._local[1:] += torch.stack([correct, torch.tensor(float(chosen.numel()), device=correct.device)])
        if self.skip_nonfinite:
            if bool(torch.isfinite(loss)):
                return loss
            self.skipped += 1
            logger.warning("step %d: the loss is %s on the data rows %s; batch skipped (skip_nonfinite_batches)",
                           step, loss.item(), sources)
            return sum(p.sum() for p in model.parameters() if p.requires_grad) * 0.0 + loss.detach()
        self._local[0] += (~torch.isfinite(loss.detach())).float()
        self._batches.append((loss.detach(), sources, step))  # which one, if any: at the step's end
        return loss

    # ------------------------------------------------------------------ signals
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

    # ------------------------------------------------------------------ callback
    def on_train_begin(self, args, state, control, **kwargs):
        if threading.current_thread() is threading.main_thread():  # signal handlers live in the main thread
            self._previous = {signum: signal.getsignal(signum) for signum in self.signals}
            for signum in self.signals:
                signal.signal(signum, self._handle)

    def on_step_end(self, args, state, control, **kwargs):
        flags = torch.cat([self._local, torch.tensor([float(self.received is not None)], device=self.device)])
        nonfinite, correct, seen, stop = reduce(flags, reduction="sum").tolist()  # the step's one collective
        self._local.zero_()
        self._since_log += torch.tensor([correct, seen], dtype=torch.float64)
        batches, self._batches = self._batches, []
        if nonfinite:
            bad = [(loss, rows) for loss, rows, _ in batches if not bool(torch.isfinite(loss))]
            where = f"at data rows {', '.join(bad[0][1] or [])}" if bad else "of another process (see its log)"
            raise TrainingError(
                f"step {state.global_step}: the training loss is {bad[0][0].item() if bad else 'not finite'} on "
                f"the batch {where}. Check those rows "
                "(margins, soft labels, scores), lower the learning rate or use float32; or set "
                "skip_nonfinite_batches: true to skip such batches and count them.")
        if stop:
            control.should_save = control.should_training_stop = True
            self.stopped_at = state.global_step
            self.received = self.received or signal.SIGTERM  # a signal that reached another process

    def on_train_end(self, args, state, control, **kwargs):
        self._restore()

    def log_values(self) -> dict:
        """Training accuracy since the last log line (all processes), and the skipped batches so far."""
        correct, seen = self._since_log.tolist()
        self._since_log.zero_()
        values = {"accuracy": round(correct / seen, 4)} if seen else {}
        return {**values, **({"skipped_nonfinite_batches": self.skipped} if self.skipped else {})}
