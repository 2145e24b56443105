"""Test-only Lightning callbacks, instantiated from config overrides such as
``+callbacks.inject._target_=hooks.InjectNonFinite`` (``tests/`` is on ``sys.path``)."""

import math
import os
import signal
import time

import lightning as L
from lightning.pytorch.loggers import Logger


class InjectNonFinite(L.Callback):
    """Fill the training batch with NaN at optimizer step ``step`` (and every later step
    when ``forever``): the loss of that step is then NaN."""

    def __init__(self, step: int, forever: bool = False):
        self.step, self.forever = step, forever

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
        if trainer.global_step == self.step or (self.forever and trainer.global_step >= self.step):
            batch[0].fill_(math.nan)


class DropStep(L.Callback):
    """The reference for InjectNonFinite: step ``step`` runs as usual (same random draws)
    but its gradients are dropped, so the optimizer does not update anything."""

    def __init__(self, step: int):
        self.step = step

    def on_before_optimizer_step(self, trainer, pl_module, optimizer):
        if trainer.global_step == self.step:
            for p in pl_module.parameters():
                p.grad = None


class SlowSteps(L.Callback):
    """Sleep after each training batch, so that a test can kill a run mid-epoch."""

    def __init__(self, seconds: float):
        self.seconds = seconds

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
        time.sleep(self.seconds)


class StopAfterEpochs(L.Callback):
    """Stop the run after ``epochs`` epochs (checkpoints of the last one written): an
    interruption that keeps the run's own ``trainer.max_epochs``."""

    def __init__(self, epochs: int):
        self.epochs = epochs

    def on_train_epoch_end(self, trainer, pl_module):
        if trainer.current_epoch + 1 >= self.epochs:
            trainer.should_stop = True


class KillAtStep(L.Callback):
    """SIGKILL this process right after optimizer step ``step`` (and its checkpoints)."""

    def __init__(self, step: int):
        self.step = step

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
        if trainer.global_step == self.step:
            os.kill(os.getpid(), signal.SIGKILL)


class KillAfterSave(Logger):
    """A logger that SIGKILLs the process right after the checkpoint of step ``step`` is
    written, before Lightning logs that step: the worst moment for the run's history."""

    def __init__(self, step: int):
        super().__init__()
        self.step = step

    name = "kill"
    version = ""

    def log_hyperparams(self, *args, **kwargs):
        pass

    def log_metrics(self, metrics, step=None):
        pass

    def after_save_checkpoint(self, checkpoint_callback):
        if checkpoint_callback._last_step_saved == self.step:
            os.kill(os.getpid(), signal.SIGKILL)
