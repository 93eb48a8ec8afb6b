"""Using a finished run folder (docs/runs.md): its config, its weights, and its network with
preprocessing, always rebuilt from the saved config."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import hydra
import lightning as L
import torch
from hydra.errors import InstantiationException
from omegaconf import DictConfig, OmegaConf
from PIL import Image
from torch import nn

from fmnist_lightning.artifacts import load_tensors
from fmnist_lightning.data import IdxDataModule
from fmnist_lightning.data.augment import build_preprocess
from fmnist_lightning.data.photos import to_fashion_mnist
from fmnist_lightning.errors import DamagedFileError, RunError, UserError
from fmnist_lightning.evaluation.calibration import read_temperature
from fmnist_lightning.evaluation.conformal import GivesSets, read_conformal
from fmnist_lightning.models.compose import module_arguments, module_class
from fmnist_lightning.run_folder import NET_WEIGHTS, RunFolder


def net_weights(checkpoint: dict) -> dict[str, torch.Tensor]:
    """The ``net.*`` tensors of a loaded Lightning checkpoint, without the prefix."""
    return {k.removeprefix("net."): v for k, v in checkpoint["state_dict"].items() if k.startswith("net.")}


#: What to do about damaged weights, for the commands that read them.
WEIGHTS_FIX = "Use other weights of the run (weights=net.pt, best or last), or train it again."


def load_state_dict(path: Path) -> dict[str, torch.Tensor]:
    """The network's ``state_dict`` from a ``net.pt`` file or a Lightning checkpoint.

    Raises:
        DamagedFileError: The file is unreadable or holds no network weights.
    """
    state = load_tensors(path, WEIGHTS_FIX)
    if isinstance(state, dict) and isinstance(state.get("state_dict"), dict):
        state = net_weights(state)
    if not (isinstance(state, dict) and state and all(isinstance(v, torch.Tensor) for v in state.values())):
        raise DamagedFileError(path, "it holds no network weights (a state_dict of tensors)", WEIGHTS_FIX)
    return state


def check_checkpoint_fits(net: nn.Module, path: Path, overrides: list[str]) -> None:
    """Refuses a checkpoint whose network weights do not have the shapes of ``net``'s.

    Raises:
        DamagedFileError: The checkpoint cannot be read, or is not a Lightning checkpoint.
        RunError: A tensor is missing, extra, or shaped differently.
    """
    fix = "Start from another checkpoint (ckpt_path=<a run's checkpoints/*.ckpt>), or train again."
    checkpoint = load_tensors(path, fix, mmap=True)
    if not (isinstance(checkpoint, dict) and isinstance(checkpoint.get("state_dict"), dict)):
        raise DamagedFileError(path, "it is not a Lightning checkpoint (it has no state_dict)", fix)
    saved = net_weights(checkpoint)
    wanted = net.state_dict()
    differ = sorted(
        f"{key}: checkpoint {list(saved[key].shape) if key in saved else 'none'}, config "
        f"{list(wanted[key].shape) if key in wanted else 'none'}"
        for key in set(saved) | set(wanted)
        if key not in saved or key not in wanted or saved[key].shape != wanted[key].shape
    )
    if differ:
        raise RunError(
            f"checkpoint {path} holds a different network than this config builds ({len(differ)} tensors "
            f"differ, e.g. {differ[0]}); the overrides {' '.join(overrides) or '(none)'} must not change "
            "the model or data.image_size of a run being continued"
        )


def build_module(cfg: DictConfig) -> L.LightningModule:
    """The untrained LightningModule (``module._target_``) of a run config, for evaluation.

    Raises:
        RunError: The module cannot be built (e.g. its class, or its network's, has moved).
    """
    try:
        return module_class(cfg)(**module_arguments(cfg, training=False))
    except Exception as err:
        cause = err.__cause__ or err
        raise RunError(
            f"cannot build the run's model (module._target_={cfg.module.get('_target_')!r}, "
            f"model._target_={cfg.model.get('_target_')!r}): {cause}"
        ) from None


def build_datamodule(cfg: DictConfig, data_root: str | None = None) -> IdxDataModule:
    """Instantiates ``cfg.data``, optionally with another ``data.root`` (relative to the working directory).

    Raises:
        UserError: The DataModule refused its config or ``data_root`` (e.g. a folder that does not
            exist), as ``data: <its message>``, for the commands' one ``error:`` line.
    """
    try:
        return hydra.utils.instantiate(cfg.data, **({"root": data_root} if data_root else {}))
    except InstantiationException as err:
        if isinstance(err.__cause__, UserError):
            raise UserError(f"data: {err.__cause__}") from None
        raise


@dataclass
class TrainedModel(GivesSets):
    """A trained network with the preprocessing of the run that made it, and its conformal
    prediction sets (``conformal.GivesSets``: ``check_sets``, ``predict_sets``).

    Attributes:
        module: The LightningModule holding the network, in eval mode.
        preprocess: uint8 ``(B, 1, H, W)`` → float ``(B, 1, S, S)``: the run's resize and normalisation.
        weights: The file the weights came from.
        temperature: The run's fitted temperature, dividing ``predict_proba``'s logits, or ``None``.
        conformal: The run's ``conformal.json`` record (``read_conformal``), or ``None``.
        run_dir: The run folder, for messages.
    """

    module: L.LightningModule
    preprocess: nn.Module
    config: DictConfig
    weights: Path
    temperature: float | None = None
    conformal: dict[str, Any] | None = None
    run_dir: Path | None = None

    @property
    def calibrated(self) -> bool:
        """Whether the probabilities are temperature-scaled."""
        return self.temperature is not None

    @property
    def class_names(self) -> tuple[str, ...]:
        """The dataset's class names in label order."""
        return tuple(self.config.data.class_names)

    @property
    def net(self) -> nn.Module:
        """The network: float ``(B, 1, S, S)`` → ``(B, num_classes)`` logits."""
        return self.module.net

    @property
    def device(self) -> torch.device:
        """The device the network's parameters are on."""
        return next(self.net.parameters()).device

    @torch.inference_mode()
    def predict_proba(self, images: torch.Tensor) -> torch.Tensor:
        """``softmax(logits / temperature)``, float ``(B, num_classes)``, of uint8 ``(B, 1, H, W)`` images."""
        x = self.preprocess(images.to(self.device))
        return (self.net(x) / (self.temperature or 1.0)).softmax(dim=1)

    def no_sets(self) -> str:
        """Why the run gives no prediction sets for these weights, and how to get them."""
        return (
            f"no prediction sets for {self.weights}: the run has no conformal.json (it was made before "
            "conformal prediction sets), or these weights are not net.pt or best, the ones its sets are "
            f"calibrated for. To get them: fmnist-evaluate run_dir={self.run_dir or '<run>'} weights=best, then "
            "copy conformal.json and temperature.json from its output folder into the run folder (docs/uncertainty.md)"
        )

    def predict_images(
        self, images: Sequence[Image.Image], preprocess: str = "photo", invert: bool | str = "auto"
    ) -> torch.Tensor:
        """Float ``(B, num_classes)`` probabilities of PIL images, each ``to_fashion_mnist(image, preprocess, invert)``.

        Raises:
            ArgumentError: ``preprocess`` or ``invert`` is not one of the choices.
            ImageError: An image cannot be converted (blank, or not 28×28 for ``"none"``).
        """
        return self.predict_converted([to_fashion_mnist(image, preprocess, invert) for image in images])

    def predict_converted(self, images: Sequence[torch.Tensor]) -> torch.Tensor:
        """Float ``(B, num_classes)`` probabilities of B uint8 ``(1, 1, H, W)`` images: one batch when
        they share a size (``photo`` and ``none``: all 28×28), else one pass each (``pad``)."""
        if len({x.shape for x in images}) == 1:
            return self.predict_proba(torch.cat(list(images)))
        return torch.cat([self.predict_proba(x) for x in images])


def run_temperature(run_dir: str | Path, weights: str = NET_WEIGHTS) -> float | None:
    """The run's ``temperature.json`` for ``net.pt`` and ``best`` (the weights it was fitted for), else ``None``.

    Raises:
        DamagedFileError: Its ``temperature.json`` is damaged.
    """
    return read_temperature(run_dir) if weights in (NET_WEIGHTS, "best") else None


def run_conformal(run_dir: str | Path, weights: str = NET_WEIGHTS) -> dict[str, Any] | None:
    """The run's ``conformal.json`` record (``read_conformal``) for ``net.pt`` and ``best``, else ``None``.

    Raises:
        DamagedFileError: Its ``conformal.json`` is damaged.
    """
    return read_conformal(run_dir) if weights in (NET_WEIGHTS, "best") else None


def load_trained(
    run_dir: str | Path,
    weights: str = NET_WEIGHTS,
    device: str | torch.device = "cpu",
    trusted_modules: Sequence[str] = (),
) -> TrainedModel:
    """Loads a run's trained network, in eval mode, with its preprocessing.

    >>> model = load_trained("outputs/runs/2026-11-22_16-40-00")  # doctest: +SKIP
    >>> probs = model.predict_proba(uint8_images)                  # doctest: +SKIP

    Args:
        weights: Which weights; see ``resolve_weights``.
        device: ``"auto"`` (CUDA if available, else the CPU), ``"cpu"``, ``"cuda"``, ...
        trusted_modules: Modules of one's own the run's config may name.

    Raises:
        RunError: The folder is not a run, lacks the weights, or the weights do not fit the
            network in its config; ``UntrustedConfigError``, its config names an untrusted callable.
        DamagedFileError: Its ``temperature.json`` or ``conformal.json`` is damaged.
    """
    if device == "auto":
        device = "cuda" if torch.cuda.is_available() else "cpu"
    cfg = RunFolder(run_dir).load_config(trusted_modules)
    path = RunFolder(run_dir).weights(weights)
    module = build_module(cfg)
    _load_weights(module, path, cfg)
    normalize = cfg.data.normalize
    preprocess = build_preprocess(cfg.data.image_size, OmegaConf.to_container(normalize) if normalize else None)
    module.eval().to(device)
    temperature, conformal = run_temperature(run_dir, weights), run_conformal(run_dir, weights)
    return TrainedModel(module, preprocess, cfg, path, temperature, conformal, Path(run_dir))


def _load_weights(module: L.LightningModule, path: Path, cfg: DictConfig) -> None:
    """Loads the weights file ``path`` into ``module.net``, built from the run's config ``cfg``."""
    try:
        module.net.load_state_dict(load_state_dict(path))
    except RuntimeError as err:
        detail = str(err).strip().splitlines()
        raise RunError(
            f"Weights {path} do not fit the run's network ({cfg.model._target_} at "
            f"data.image_size={cfg.data.image_size}): {' '.join(d.strip() for d in detail[:3])}. {WEIGHTS_FIX}"
        ) from None
