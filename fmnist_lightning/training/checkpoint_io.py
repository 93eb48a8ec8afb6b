"""Checkpoints written whole or not at all: Lightning's ``TorchCheckpointIO`` writes to the
final name, so a full disk or a kill mid-write leaves a truncated ``.ckpt``."""

from __future__ import annotations

import io
from pathlib import Path
from typing import Any

import torch
from lightning.fabric.utilities.cloud_io import _is_local_file_protocol
from lightning.pytorch.plugins.io import TorchCheckpointIO

from fmnist_lightning.artifacts import write_atomically


class AtomicCheckpointIO(TorchCheckpointIO):
    """``TorchCheckpointIO`` that writes local checkpoints atomically (``write_atomically``):
    on an error, the earlier checkpoint of that name is left as it was."""

    def save_checkpoint(self, checkpoint: dict[str, Any], path: Any, storage_options: Any | None = None) -> None:
        if storage_options is not None or not _is_local_file_protocol(path):
            super().save_checkpoint(checkpoint, path, storage_options)
            return
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        # In memory first, as Lightning's _atomic_save: a failing file write raises a RuntimeError, not the OSError.
        buffer = io.BytesIO()
        torch.save(checkpoint, buffer)
        write_atomically(path, buffer.getbuffer())
