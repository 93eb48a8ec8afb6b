"""Weight averaging as Lightning callbacks, each switched on by a config of the ``callbacks``
group (``callbacks=[default,lookahead]``, ``callbacks=[default,ema]``): ``Lookahead``
(Zhang, Lucas, Hinton & Ba, "Lookahead Optimizer: k steps forward, 1 step back", NeurIPS 2019),
which torch lacks, and ``EMAWeightAveraging``, Lightning's own, made to hand its averaged weights
to the test of the best checkpoint."""

from __future__ import annotations

from typing import Any

import lightning as L
import torch
from lightning.pytorch.callbacks import Callback
from lightning.pytorch.callbacks import EMAWeightAveraging as LightningEMAWeightAveraging
from lightning.pytorch.trainer.states import TrainerFn

from fmnist_lightning.errors import require


class Lookahead(Callback):
    """Lookahead around whatever optimizer the run has (the "inner" one, with its scheduler,
    gradient accumulation and state left as they are, the paper's default): fp32 "slow" weights
    start as a copy of the LightningModule's trainable parameters, on their device, when training
    starts; after every ``k``-th optimizer step (``trainer.global_step % k == 0``: optimizer steps,
    not batches) ``slow += alpha · (fast − slow)`` and the network's ("fast") weights become
    ``slow``. ``alpha=1`` is the inner optimizer alone, bit for bit.

    The network is validated, checkpointed and tested with its fast weights as they are: at the
    end of a cycle they equal the slow ones (the weights the paper's Algorithm 1 returns); at the
    end of an epoch whose step count is not a multiple of ``k``, the fast weights of the cycle
    under way, and the cycle continues across the epoch boundary. (airbench94's ``LookaheadState``,
    github.com/KellerJordan/cifar10-airbench, differs: it schedules its step towards the fast weights
    over training and copies its slow weights into the network once, at the end, and it also
    averages BatchNorm's running statistics; buffers are left alone here, as in the paper.)

    The slow weights and the step of the last update are this callback's checkpoint state
    (``state_dict``), so ``python train.py resume=<run folder>`` continues bit for bit. They are
    taken in ``on_train_start``, after Lightning has restored a checkpoint whatever the strategy
    (``Trainer._run``: the ``setup`` hooks, then the restore for most strategies, then
    ``on_fit_start``; strategies with ``restore_checkpoint_after_setup`` restore after
    ``on_fit_start``), so restored slow weights are never replaced by a fresh copy. A start
    checkpoint without this state (a run trained without Lookahead) starts from a fresh copy.

    Args:
        k: Optimizer steps per cycle (the paper's default and airbench's: 5).
        alpha: The slow weights' step towards the fast ones (the paper's default: 0.5).

    Raises:
        ArgumentError: ``k`` is not an integer >= 1, or ``alpha`` is not in (0, 1].
        ValueError: When training starts, a restored checkpoint's slow weights are for other parameters.
    """

    def __init__(self, k: int = 5, alpha: float = 0.5) -> None:
        require(isinstance(k, int) and not isinstance(k, bool) and k >= 1, "k", k, "an integer >= 1 (steps per cycle)")
        require(
            isinstance(alpha, int | float) and not isinstance(alpha, bool) and 0.0 < alpha <= 1.0,
            "alpha",
            alpha,
            "a fraction in (0, 1] (1: the inner optimizer alone)",
        )
        self.k, self.alpha = k, float(alpha)
        self._slow: dict[str, torch.Tensor] | None = None
        self._restored: dict[str, torch.Tensor] | None = None  # from a checkpoint, until training starts
        self._synced_step = 0  # the global step of the last update

    @staticmethod
    def _trained(pl_module: L.LightningModule) -> dict[str, torch.nn.Parameter]:
        return {name: p for name, p in pl_module.named_parameters() if p.requires_grad}

    def on_train_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        params = self._trained(pl_module)
        source = self._restored
        if source is not None and source.keys() != params.keys():
            raise ValueError(
                f"the checkpoint's Lookahead slow weights are for parameters {sorted(source)[:3]}..., "
                f"not this module's {sorted(params)[:3]}...: start from a checkpoint of the same network"
            )
        source = source if source is not None else {name: p.detach() for name, p in params.items()}
        self._slow = {name: source[name].to(p.device, torch.float32, copy=True) for name, p in params.items()}
        self._restored = None
        # A checkpoint written by a stop in the middle of a step (InterruptCheckpoint raises in its
        # on_train_batch_end, which may come before this callback's) can miss that step's update.
        self._update(trainer, pl_module)

    def on_train_batch_end(
        self, trainer: L.Trainer, pl_module: L.LightningModule, outputs: Any, batch: Any, batch_idx: int
    ) -> None:
        self._update(trainer, pl_module)

    @torch.no_grad()
    def _update(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        """The outer step, once per ``k`` optimizer steps (a batch that only accumulates a gradient
        leaves ``global_step`` as it was, and the step already done)."""
        step = trainer.global_step
        if self._slow is None or step == self._synced_step or step % self.k != 0:
            return
        params = self._trained(pl_module)
        for name, slow in self._slow.items():
            fast = params[name]
            slow.lerp_(fast.detach().to(torch.float32), self.alpha)  # exactly ``fast`` for alpha = 1
            fast.copy_(slow)
        self._synced_step = step

    def state_dict(self) -> dict[str, Any]:
        slow = self._slow if self._slow is not None else self._restored
        return {} if slow is None else {"slow_weights": slow, "synced_step": self._synced_step}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        self._restored = dict(state_dict["slow_weights"])
        self._synced_step = int(state_dict["synced_step"])
        self._slow = None


class EMAWeightAveraging(LightningEMAWeightAveraging):
    """Lightning's ``EMAWeightAveraging`` (``lightning.pytorch.callbacks.weight_averaging``): an
    ``AveragedModel`` (a copy of the whole LightningModule, on its device unless ``device`` says)
    updated after optimizer steps as ``ema = decay · ema + (1 − decay) · weights``, BatchNorm's
    running statistics averaged with the parameters unless ``use_buffers=False``. Validation runs
    with the averaged weights (swapped in for the validation epoch), so ``val/acc``, early stopping
    and the best checkpoint judge them; every checkpoint's ``state_dict`` holds the averaged
    weights (the ones ``net.pt`` and ``fmnist-evaluate`` read), with the current weights under
    ``current_model_state`` and the average's count under ``averaging_state``, which a resume
    restores; at the end of training the network takes the averaged weights.

    Two changes, so that the test of the best checkpoint (``trainer.test(ckpt_path=...)`` on the
    same Trainer, ``fmnist_lightning.training.pipeline.train``) tests the averaged weights: outside
    fitting a checkpoint's averaged ``state_dict``, which Lightning has just loaded, is kept
    (Lightning's own callback would load ``current_model_state`` over it, since its average outlives
    the fit), and the average is dropped when fitting ends (validating or testing later swaps
    nothing in).

    Args:
        decay: The average's decay per update, in [0, 1].
        update_every_n_steps: Update after every n-th optimizer step (integer >= 1).
        update_starting_at_step: First optimizer step (zero-based) to update after; ``None``: the first.
        update_starting_at_epoch: Also update after each epoch from this one (zero-based); ``None``: never.
        kwargs: Lightning's other arguments (``device``, ``use_buffers``).

    Raises:
        ArgumentError: An argument is out of its range.
    """

    def __init__(
        self,
        decay: float = 0.999,
        update_every_n_steps: int = 1,
        update_starting_at_step: int | None = None,
        update_starting_at_epoch: int | None = None,
        **kwargs: Any,
    ) -> None:
        require(0.0 <= decay <= 1.0, "decay", decay, "a fraction in [0, 1]")
        require(
            isinstance(update_every_n_steps, int) and update_every_n_steps >= 1,
            "update_every_n_steps",
            update_every_n_steps,
            "an integer >= 1",
        )
        for name, value in (
            ("update_starting_at_step", update_starting_at_step),
            ("update_starting_at_epoch", update_starting_at_epoch),
        ):
            require(value is None or (isinstance(value, int) and value >= 0), name, value, "an integer >= 0 or null")
        super().__init__(
            decay=decay,
            update_every_n_steps=update_every_n_steps,
            update_starting_at_step=update_starting_at_step,
            update_starting_at_epoch=update_starting_at_epoch,
            **kwargs,
        )

    def on_fit_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        """The average copied the module in ``setup``, before the module's own ``setup`` set its frozen
        parameters from the data (``VGGBNNet(whiten=...)``'s ``whitening``): they are copied again here."""
        if self._average_model is None:
            return
        with torch.no_grad():
            for average, own in zip(self._average_model.module.parameters(), pl_module.parameters(), strict=True):
                if not own.requires_grad:
                    average.copy_(own)

    def on_load_checkpoint(self, trainer: L.Trainer, pl_module: L.LightningModule, checkpoint: dict[str, Any]) -> None:
        if trainer.state.fn == TrainerFn.FITTING:
            super().on_load_checkpoint(trainer, pl_module, checkpoint)

    def teardown(self, trainer: L.Trainer, pl_module: L.LightningModule, stage: str) -> None:
        if stage == "fit":
            self._average_model = None
