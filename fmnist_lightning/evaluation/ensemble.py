"""Several finished runs evaluated as one deep ensemble (Lakshminarayanan, Pritzel & Blundell,
NeurIPS 2017): the mean of the members' probabilities, ``fmnist-evaluate run_dir=[<run>,<run>,...]``.

``load_runs`` gives one run's model or the ensemble's alike; the ensemble then goes through the
same test loop and ``TestReport`` as one run (``evaluate.evaluate_run``), so its report has
the same sections (accuracy with its interval, calibration with a temperature fitted on the
ensemble, selective classification, conformal sets) and its ``predictions.npz`` can be compared
with a member's by ``fmnist-compare``.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import lightning as L
import torch
from omegaconf import OmegaConf
from torch import nn

from fmnist_lightning.errors import RunError, require
from fmnist_lightning.evaluation.compare import describe_test_set
from fmnist_lightning.evaluation.runs import TrainedModel, load_trained


class EnsembleNet(nn.Module):
    """The members' networks as one: float ``(B, 1, S, S)`` images → float32 ``(B, C)``
    ``log(mean_i softmax(net_i(x)))``, whose softmax is the mean of the members' probabilities
    (each member's own, without its temperature, as deep ensembles average them)."""

    def __init__(self, nets: Sequence[nn.Module]) -> None:
        super().__init__()
        self.members = nn.ModuleList(nets)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        probs = torch.stack([net(x).float().softmax(dim=1) for net in self.members]).mean(dim=0)
        return probs.clamp_min(torch.finfo(torch.float32).tiny).log()


class EnsembleModule(L.LightningModule):
    """The LightningModule of an ``EnsembleNet`` for Lightning's test loop: ``test_step``
    returns the batch's float32 ``(B, C)`` log mean probabilities, in fp32."""

    def __init__(self, net: EnsembleNet) -> None:
        super().__init__()
        self.net = net

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)

    def test_step(self, batch: tuple[torch.Tensor, torch.Tensor], batch_idx: int) -> torch.Tensor:
        with torch.autocast(self.device.type, enabled=False):
            return self(batch[0])


def _described(model: TrainedModel) -> dict[str, Any]:
    """What members must share: the test set (dataset, test files, image size), the class names,
    the normalisation (one DataModule preprocesses the images for all) and the validation split
    (the ensemble's temperature and conformal sets are fitted on it: no member may have trained
    on those images)."""
    data = model.config.data
    normalize = OmegaConf.to_container(data.normalize) if data.get("normalize") is not None else None
    split = {key: data.get(key) for key in ("val_fraction", "split_seed", "folds", "fold")}
    return describe_test_set(model.config) | {
        "class_names": list(model.class_names),
        "normalize": normalize,
        "validation split": split,
    }


def check_members(models: Sequence[TrainedModel], run_dirs: Sequence[str | Path]) -> None:
    """Refuses members that differ from the first in their test set, class names or preprocessing.

    Raises:
        RunError: The message names the member and what differs.
    """
    first = _described(models[0])
    for model, run_dir in zip(models[1:], run_dirs[1:], strict=True):
        theirs = _described(model)
        differ = [key for key in first if theirs[key] != first[key]]
        if differ:
            key = differ[0]
            raise RunError(
                f"run_dir={run_dir}: its {key} is {theirs[key]!r}, {run_dirs[0]}'s is {first[key]!r}; the members "
                "of an ensemble must share the dataset, its test files, the class names, data.image_size, "
                "data.normalize and the validation split (data.val_fraction, split_seed, folds, fold)"
            )


def load_runs(
    run_dir: str | Path | Sequence[str | Path],
    weights: str = "best",
    device: str = "auto",
    trusted_modules: Sequence[str] = (),
) -> tuple[TrainedModel, str | list[str]]:
    """The model of a run folder (``runs.load_trained``), or of a list of them (``load_ensemble``),
    and the weights file it uses (a list: each member's), for ``fmnist-evaluate`` and ``fmnist-ood``.

    Raises:
        ArgumentError: A list of fewer than two runs, or one named twice.
        RunError: A run or its weights cannot be used, or the members differ (``check_members``).
    """
    if isinstance(run_dir, list | tuple):
        model, members = load_ensemble(run_dir, weights, device, trusted_modules)
        return model, [str(member.weights) for member in members]
    model = load_trained(run_dir, weights, device, trusted_modules)
    return model, str(model.weights)


def load_ensemble(
    run_dirs: Sequence[str | Path], weights: str = "best", device: str = "auto", trusted_modules: Sequence[str] = ()
) -> tuple[TrainedModel, list[TrainedModel]]:
    """The runs as one ``TrainedModel`` (an ``EnsembleModule``, the first member's config and
    preprocessing, no temperature), and the members.

    Raises:
        ArgumentError: Fewer than two runs, or one named twice.
        RunError: A run or its weights cannot be used, or the members differ (``check_members``).
    """
    names = [str(run_dir) for run_dir in run_dirs]
    require(len(names) >= 2 and len(set(names)) == len(names), "run_dir", names, "two or more different run folders")
    members = [load_trained(run_dir, weights, device, trusted_modules) for run_dir in run_dirs]
    check_members(members, names)
    module = EnsembleModule(EnsembleNet([model.net for model in members])).eval()
    first = members[0]
    return TrainedModel(module, first.preprocess, first.config, first.weights), members
