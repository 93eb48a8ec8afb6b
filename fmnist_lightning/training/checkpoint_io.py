"""Checkpoints written whole or not at all.

Lightning's ``TorchCheckpointIO`` writes a checkpoint straight to its final name, so a full
disk or a kill mid-write leaves a truncated ``.ckpt`` that looks like a checkpoint.
``AtomicCheckpointIO`` writes it beside its target and renames it into place
(``fmnist_lightning.artifacts.write_atomically``). ``build_run`` gives it to every Trainer.
"""

from __future__ import annotations

import io
from pathlib import Path
from typing import Any

import torch
from lightning.fabric.utilities.cloud_io import _is_local_file_protocol
from lightning.pytorch.plugins.io import TorchCheckpointIO

from fmnist_lightning.artifacts import write_atomically


class AtomicCheckpointIO(TorchCheckpointIO):
    """``TorchCheckpointIO`` whose local checkpoints are written to a temporary file in the
    same folder, then renamed over the target; on an error (``OSError`` from a full disk, say)
    the temporary file is removed and the earlier checkpoint of that name is left as it was.
    Remote paths (fsspec URLs) are written by ``TorchCheckpointIO`` itself.
    """

    def save_checkpoint(self, checkpoint: dict[str, Any], path: Any, storage_options: Any | None = None) -> None:
        if storage_options is not None or not _is_local_file_protocol(path):
            super().save_checkpoint(checkpoint, path, storage_options)
            return
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        # Serialised in memory first, as Lightning's own _atomic_save does: torch.save into a
        # file that fails mid-write raises a RuntimeError of its zip writer, not the OSError.
        buffer = io.BytesIO()
        torch.save(checkpoint, buffer)
        write_atomically(path, buffer.getbuffer())
