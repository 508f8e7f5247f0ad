"""Weight pruning in the Hugging Face ``Trainer`` (the ``transformers`` extra).

``PruningTrainerCallback(config)`` is a ``TrainerCallback`` (no ``Trainer`` subclass):

* ``on_train_begin`` builds a :class:`~prunekit.Pruning` session on the Trainer's model and tells
  it the optimizer (``attach(optimizer, hooks=False)``, so events also zero the optimizer state of
  pruned entries);
* ``on_pre_optimizer_step`` (after gradient clipping, before ``optimizer.step()``) runs the step's
  event and zeroes pruned gradients; ``on_optimizer_step`` re-applies masks where needed and
  advances the session's step, so the session counts exactly the Trainer's ``global_step``
  (gradient accumulation included);
* ``on_save`` writes the session's state as ``prunekit_pruning.pt`` into the checkpoint folder the
  Trainer has just written (with FSDP2: every rank its shards, with ``torch.distributed.checkpoint``,
  into ``prunekit_pruning/``, see :mod:`prunekit.integrations.fsdp`); ``trainer.train(resume_from_checkpoint=...)``
  restores it (with FSDP2 on any number of ranks);
* ``on_log`` adds ``sparsity/<group>`` (element-wise, from the live weights) to the Trainer's logs;
* ``on_train_end`` finalizes the session (pruned weights stay zero).

**Fallback.** ``transformers`` releases without ``on_pre_optimizer_step`` (before 4.41) get the
session attached through the optimizer's step hooks instead. The difference: a step that AMP's
GradScaler skips (inf/NaN gradients) is then not counted by the session, so its schedule drifts from
``global_step`` by the number of skipped steps.

**Finding the checkpoint on resume.** The Trainer does not tell callbacks which folder it resumes
from. When training starts at ``global_step > 0`` the callback looks, in order, in ``resume_from``
(the constructor argument), ``TrainingArguments.resume_from_checkpoint``, and
``<output_dir>/checkpoint-<global_step>`` (where ``resume_from_checkpoint=True`` resumes from).
Resuming from a folder elsewhere: pass the same path as ``resume_from``.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path
from typing import Any

import torch

try:
    from transformers import TrainerCallback
except ImportError as err:  # pragma: no cover - depends on what is installed
    raise ImportError("prunekit.integrations.transformers needs transformers: pip install 'prunekit[transformers]'") from err

from prunekit.config import PruningConfig, load_config
from prunekit.errors import PruningError
from prunekit.integrations._common import group_sparsity_metrics, unwrap_optimizer, warn_if_too_short
from prunekit.pruner.selection import unwrap_model
from prunekit.pruner.session import Pruning
from prunekit.integrations.fsdp import STATE_FILE as FSDP_STATE_FILE
from prunekit.integrations.fsdp import load_pruning_state, save_pruning_state, saved_global_step
from prunekit.sparse_checkpoint import SPARSE_FILE, SparseCheckpointStats, save_sparse

__all__ = ["PruningTrainerCallback", "STATE_FILE", "unwrap_optimizer"]

#: file name of the pruning state inside a Trainer checkpoint folder
STATE_FILE = "prunekit_pruning.pt"
#: folder of the pruning state of a session whose layers FSDP2 shards (torch.distributed.checkpoint, see prunekit.integrations.fsdp)
SHARDED_STATE_DIR = "prunekit_pruning"
logger = logging.getLogger(__name__)
_HAS_OPTIMIZER_EVENTS = hasattr(TrainerCallback, "on_pre_optimizer_step") and hasattr(TrainerCallback, "on_optimizer_step")


class PruningTrainerCallback(TrainerCallback):
    """Prune the Trainer's model as ``config`` (a path, YAML text, a dict or a config) says.

    ``resume_from``: the checkpoint folder to take the pruning state from when resuming from a
    folder outside ``output_dir``. ``log``: add per-group sparsity to the Trainer's logs.
    ``save_sparse``: also write each checkpoint's weights in compact form (zeros as a bitmask,
    :func:`prunekit.save_sparse`) as ``checkpoint-N/model.sparse.safetensors``; what each saved is
    in :attr:`sparse_saves`.
    """

    def __init__(self, config: Any, *, resume_from: str | os.PathLike[str] | None = None, log: bool = True,
                 save_sparse: bool = False, **options: Any) -> None:
        self.config: PruningConfig = load_config(config)
        self.resume_from = resume_from
        self.log = log
        self.save_sparse = save_sparse
        self.sparse_saves: list[SparseCheckpointStats] = []
        self.options = options
        self.pruning: Pruning | None = None

    # ------------------------------------------------------------------ training
    def on_train_begin(self, args: Any, state: Any, control: Any, model: Any = None, optimizer: Any = None, **kwargs: Any) -> None:
        if model is None or optimizer is None:
            raise PruningError("PruningTrainerCallback needs the Trainer's model and optimizer at on_train_begin")
        if self.pruning is not None:  # a previous train() of this callback that did not end: free its layers
            self.pruning.close()
        self.pruning = Pruning(model, self.config, **self.options)
        self.pruning.attach(unwrap_optimizer(optimizer), hooks=not _HAS_OPTIMIZER_EVENTS)
        if state.global_step > 0:
            self._restore(args, state.global_step)
        warn_if_too_short(self.pruning, getattr(state, "max_steps", None), "the Trainer's max_steps")

    def on_pre_optimizer_step(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
        if self.pruning is not None and not self.pruning.attached:
            self.pruning.on_before_optimizer_step()

    def on_optimizer_step(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
        if self.pruning is not None and not self.pruning.attached:
            self.pruning.on_after_optimizer_step()

    def on_train_end(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
        if self.pruning is not None:
            self.pruning.finalize()

    # ------------------------------------------------------------------ checkpoints
    def on_save(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
        if self.pruning is None:
            return
        folder = Path(args.output_dir) / f"checkpoint-{state.global_step}"
        if not folder.is_dir():
            raise PruningError(
                f"the Trainer saved step {state.global_step} but {folder} does not exist; the pruning state could "
                f"not be stored next to it (custom checkpoint folders are not supported)"
            )
        if self.pruning.sharded:  # FSDP2: every rank saves its shards (DCP); loads on any number of ranks
            if self.save_sparse:
                raise PruningError(
                    "save_sparse=True with a model FSDP2 shards: each rank holds a shard of the weights, and the compact "
                    "file needs whole weights; save the model with the Trainer (sharded), gather it after training "
                    "(get_model_state_dict with full_state_dict=True) and call prunekit.save_sparse on it"
                )
            save_pruning_state(self.pruning, folder / SHARDED_STATE_DIR)
            return
        torch.save(self.pruning.state_dict(), folder / STATE_FILE)
        if self.save_sparse:
            stats = save_sparse(unwrap_model(self.pruning.model), folder / SPARSE_FILE)
            logger.info("%s", stats)
            self.sparse_saves.append(stats)

    def _restore(self, args: Any, global_step: int) -> None:
        assert self.pruning is not None
        candidates = [
            Path(p)
            for p in (self.resume_from, getattr(args, "resume_from_checkpoint", None), Path(args.output_dir) / f"checkpoint-{global_step}")
            if p is not None and not isinstance(p, bool)
        ]
        for folder in candidates:
            sharded = folder / SHARDED_STATE_DIR
            if (sharded / FSDP_STATE_FILE).is_file():
                step = saved_global_step(sharded)
                if step != global_step:
                    raise PruningError(
                        f"{sharded} holds the pruning state of step {step}, but the Trainer resumes at step {global_step}; "
                        f"pass the checkpoint folder of step {global_step} as resume_from"
                    )
                load_pruning_state(self.pruning, sharded)
                return
            file = folder / STATE_FILE
            if file.is_file():
                state = torch.load(file, map_location="cpu", weights_only=True)  # plain values and tensors only
                if int(state["global_step"]) != global_step:
                    raise PruningError(
                        f"{file} holds the pruning state of step {state['global_step']}, but the Trainer resumes at step "
                        f"{global_step}; pass the checkpoint folder of step {global_step} as resume_from"
                    )
                self.pruning.load_state_dict(state)
                return
        looked = ", ".join(f"{c / STATE_FILE} or {c / SHARDED_STATE_DIR}" for c in candidates)
        raise PruningError(
            f"the Trainer resumes at step {global_step} but no pruning state was found (looked for {looked}); "
            f"pass PruningTrainerCallback(..., resume_from=<the checkpoint folder>)"
        )

    # ------------------------------------------------------------------ logging
    def on_log(self, args: Any, state: Any, control: Any, logs: dict[str, Any] | None = None, **kwargs: Any) -> None:
        if not self.log or self.pruning is None or logs is None:
            return
        values = self.sparsity_metrics()
        logs.update(values)
        if state.log_history and state.log_history[-1].get("step") == state.global_step:
            state.log_history[-1].update(values)

    def sparsity_metrics(self) -> dict[str, float]:
        """``{"sparsity/<group>": element-wise sparsity of the group's live weights}``."""
        assert self.pruning is not None
        return group_sparsity_metrics(self.pruning)
