"""Undo journal of a one-shot run: the original weights of every layer before it is pruned.

One-shot pruning changes the model block by block. If a later block fails (a layer that never
runs, non-finite activations, an out-of-memory error, Ctrl-C), :meth:`Journal.restore` writes the
saved originals back, so the model is exactly as it was before the call. Where the originals wait:

* ``"disk"`` (default): one file per block in a temporary folder (``torch.save``, read back with
  ``weights_only=True``), removed when the run ends: no extra memory;
* ``"memory"``: copies on the CPU (as much memory as the pruned layers take);
* ``"off"``: nothing kept; a failed run leaves the blocks before the failure pruned and says so.
"""

from __future__ import annotations

import shutil
import tempfile
from pathlib import Path
from typing import Literal

import torch

from prunekit.errors import PruningError

__all__ = ["Journal", "JournalMode"]

JournalMode = Literal["disk", "memory", "off"]


class Journal:
    """Keeps the weights given to :meth:`save` until :meth:`close`; :meth:`restore` puts them back."""

    def __init__(self, mode: JournalMode, directory: str | None = None) -> None:
        if mode not in ("disk", "memory", "off"):
            raise ValueError(f"journal must be 'disk', 'memory' or 'off', got {mode!r}")
        self.mode = mode
        self._weights: dict[str, torch.Tensor] = {}  # name -> the live parameter tensor
        self._memory: dict[str, torch.Tensor] = {}
        self._files: list[Path] = []
        self._off_count = 0
        self._folder = Path(tempfile.mkdtemp(prefix="prunekit-oneshot-", dir=directory)) if mode == "disk" else None

    @property
    def saved(self) -> int:
        """How many layers were saved (with ``"off"``: how many were pruned, nothing kept)."""
        return self._off_count if self.mode == "off" else len(self._weights)

    @torch.no_grad()
    def save(self, weights: dict[str, torch.Tensor]) -> None:
        """Keep the current values of ``weights`` (layer name -> weight) before they are changed."""
        if self.mode == "off":
            self._off_count += len(weights)
            return
        if not weights:
            return
        copies = {name: w.detach().to("cpu", copy=True) for name, w in weights.items()}
        if self._folder is not None:
            path = self._folder / f"{len(self._files):05d}.pt"
            try:
                torch.save(copies, path)
            except OSError as err:
                path.unlink(missing_ok=True)
                raise PruningError(
                    f"the one-shot journal could not write the original weights to {path} ({err}); free space there, "
                    f"point TMPDIR elsewhere, or pass journal='memory' (CPU copies) or journal='off'"
                ) from err
            self._files.append(path)
        else:
            self._memory.update(copies)
        self._weights.update(weights)

    @torch.no_grad()
    def restore(self) -> int:
        """Write every kept original back into its weight; returns how many layers were restored."""
        originals: dict[str, torch.Tensor] = dict(self._memory)
        for path in self._files:
            originals.update(torch.load(path, map_location="cpu", weights_only=True))
        for name, weight in self._weights.items():
            weight.copy_(originals[name].to(weight.device))
        return len(self._weights)

    def close(self) -> None:
        """Drop the kept originals (and the temporary folder)."""
        self._memory.clear()
        self._weights.clear()
        self._files.clear()
        if self._folder is not None:
            shutil.rmtree(self._folder, ignore_errors=True)
            self._folder = None
