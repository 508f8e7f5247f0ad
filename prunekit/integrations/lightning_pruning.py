"""Weight pruning in Lightning: :class:`PruningCallback` (re-exported by
:mod:`prunekit.integrations.lightning`; needs the ``lightning`` extra).

* ``on_fit_start`` builds a :class:`~prunekit.Pruning` session on the LightningModule (layer names
  are the module's own, e.g. ``net.0``; ``op_names`` are searched with ``re.search``), or on its
  submodule ``root`` (``PruningCallback(config, root="model")``: names relative to
  ``self.model``, as the Hugging Face Trainer sees them, so one YAML serves both), and tells it the
  optimizer that trains the pruned weights (``attach(optimizer, hooks=False)``).
* Lightning runs ``training_step`` and ``backward`` *inside* ``optimizer.step(closure)``, so an
  optimizer pre-step hook would fire before the gradients exist. The callback therefore runs the
  session's pre-step work in Lightning's ``on_before_optimizer_step`` (after backward, before the
  update) and its post-step work in ``on_train_batch_end`` of the batch that stepped: events fire
  once per optimizer step, with ``accumulate_grad_batches`` too, and gradient criteria see the
  step's gradients.
* ``state_dict()`` / ``load_state_dict()`` put the whole session state into Lightning checkpoints,
  so ``trainer.fit(model, ckpt_path=...)`` resumes the schedule exactly. Under FSDP2
  (``ModelParallelStrategy``, ``configure_model`` calling ``fully_shard``), where Lightning saves
  callback state from rank 0, the masks and scores are gathered into whole CPU tensors for the
  checkpoint; a resume on any number of ranks takes its rows of them.
* Per-group sparsity is logged through the module's logger as ``sparsity/<group>``: at every event
  (from the masks) and at every epoch end (measured from the live weights).
* ``on_fit_end`` finalizes the session; pruned weights stay zero.
"""

from __future__ import annotations

import warnings
from typing import Any

import torch

try:
    import lightning.pytorch as pl
except ImportError:  # pragma: no cover - depends on what is installed
    try:
        import pytorch_lightning as pl  # type: ignore[no-redef]
    except ImportError as err:
        raise ImportError("prunekit.integrations.lightning needs Lightning: pip install 'prunekit[lightning]'") from err

from prunekit.config import PruningConfig, load_config
from prunekit.errors import PruningError
from prunekit.integrations._common import group_sparsity_metrics, unwrap_optimizer, warn_if_too_short
from prunekit.pruner.session import Pruning
from prunekit.pruner.sharding import whole_tensors

__all__ = ["PruningCallback"]


def _warn_eval_mode_submodules(pl_module: torch.nn.Module) -> None:
    """Lightning keeps each submodule's train/eval mode; a model from ``from_pretrained()`` is in eval
    mode, so its dropout would stay off for the whole fine-tuning (and the pruning scores with it)."""
    frozen = [name for name, m in pl_module.named_modules()
              if isinstance(m, (torch.nn.modules.dropout._DropoutNd, torch.nn.modules.batchnorm._BatchNorm)) and not m.training]
    if pl_module.training and frozen:
        warnings.warn(
            f"training starts with {len(frozen)} dropout / batch-norm module(s) of the LightningModule in eval mode "
            f"(e.g. {frozen[0]}): Lightning keeps submodules' modes and from_pretrained() returns a model in eval mode; "
            f"call .train() on it in the LightningModule's __init__ (or before trainer.fit)",
            UserWarning,
            stacklevel=2,
        )


def _planned_steps(trainer: "pl.Trainer") -> float | None:
    """The optimizer steps the fit will take: max_steps, or Lightning's estimate from the epochs."""
    if trainer.max_steps is not None and trainer.max_steps > 0:
        return trainer.max_steps
    try:
        return float(trainer.estimated_stepping_batches)
    except Exception:  # an iterable dataset without a length: unknown
        return None


class PruningCallback(pl.Callback):
    """Prune the LightningModule as ``config`` (a path, YAML text, a dict or a config) says.

    ``root``: the attribute path of the submodule whose layer names the config uses (``"model"``
    for a LightningModule holding a Hugging Face model as ``self.model``); default: the
    LightningModule itself. ``log``: log per-group sparsity through the module's logger.
    ``options`` go to :class:`~prunekit.Pruning` (``reapply``, ``sync_masks``).
    """

    def __init__(self, config: Any, *, root: str | None = None, log: bool = True, **options: Any) -> None:
        self.config: PruningConfig = load_config(config)
        if root is not None and (not isinstance(root, str) or not root or root.startswith(".") or root.endswith(".")):
            raise ValueError(f"root must be a submodule's attribute path such as 'model' or 'model.backbone', got {root!r}")
        self.root = root
        self.log = log
        self.options = options
        self.pruning: Pruning | None = None
        self._pending_state: dict[str, Any] | None = None
        self._stepping = False
        #: between on_fit_start and the end of that fit: the session is this fit's (a restored state loads into it)
        self._fitting = False

    @property
    def state_key(self) -> str:
        return "prunekit.PruningCallback"

    # ------------------------------------------------------------------ fit
    def on_fit_start(self, trainer: "pl.Trainer", pl_module: "pl.LightningModule") -> None:
        if self.pruning is not None:  # a previous fit of this callback that did not end: free its layers
            self.pruning.close()
        self.pruning = Pruning(self._root_of(pl_module), self.config, **self.options)
        self.pruning.attach(self._optimizer_of(trainer), hooks=False)
        if self._pending_state is not None:
            self.pruning.load_state_dict(self._pending_state)
            self._pending_state = None
        self._stepping = False
        self._fitting = True

    def on_train_start(self, trainer: "pl.Trainer", pl_module: "pl.LightningModule") -> None:
        # the Trainer's loops are restored after on_fit_start: compare the step counters here
        if self.pruning is not None and self.pruning.global_step != trainer.global_step:
            raise PruningError(
                f"the pruning session is at step {self.pruning.global_step} but the Trainer at step "
                f"{trainer.global_step}; resume with the checkpoint that holds this callback's state"
            )
        _warn_eval_mode_submodules(pl_module)
        if self.pruning is not None:
            warn_if_too_short(self.pruning, _planned_steps(trainer), "this fit")

    def _root_of(self, pl_module: "pl.LightningModule") -> torch.nn.Module:
        if self.root is None:
            return pl_module
        try:
            return pl_module.get_submodule(self.root)
        except AttributeError:
            children = ", ".join(name for name, _ in pl_module.named_children()) or "none"
            raise PruningError(
                f"PruningCallback(root={self.root!r}): {type(pl_module).__name__} has no submodule {self.root!r} "
                f"(its children: {children}); pass the attribute that holds the model"
            ) from None

    def _optimizer_of(self, trainer: "pl.Trainer") -> torch.optim.Optimizer:
        assert self.pruning is not None
        weights = {id(layer.weight) for group in self.pruning.groups for layer in group.layers}
        candidates = []
        for optimizer in trainer.optimizers:
            inner = unwrap_optimizer(optimizer)
            if any(id(p) in weights for g in inner.param_groups for p in g["params"]):
                candidates.append(inner)
        if len(candidates) != 1:
            raise PruningError(
                f"PruningCallback needs exactly one optimizer that trains the pruned weights; found {len(candidates)} "
                f"among the {len(trainer.optimizers)} optimizer(s) of configure_optimizers()"
            )
        return candidates[0]

    def on_before_optimizer_step(self, trainer: "pl.Trainer", pl_module: "pl.LightningModule", optimizer: Any) -> None:
        if self.pruning is None or self._stepping:
            return
        before = len(self.pruning.history)
        self.pruning.on_before_optimizer_step()
        self._stepping = True
        if self.log and len(self.pruning.history) > before:
            record = self.pruning.history[-1]
            pl_module.log(f"sparsity/{record.pruner}", float(record.sparsity), on_step=True, on_epoch=False)

    def on_train_batch_end(self, trainer: "pl.Trainer", pl_module: "pl.LightningModule", outputs: Any, batch: Any, batch_idx: int) -> None:
        if self.pruning is not None and self._stepping:
            self.pruning.on_after_optimizer_step()
            self._stepping = False

    def on_train_epoch_end(self, trainer: "pl.Trainer", pl_module: "pl.LightningModule") -> None:
        if self.pruning is not None and self.log:
            for name, value in self.sparsity_metrics().items():
                pl_module.log(name, value, on_step=False, on_epoch=True)

    def teardown(self, trainer: "pl.Trainer", pl_module: "pl.LightningModule", stage: str) -> None:
        self._fitting = False

    def on_fit_end(self, trainer: "pl.Trainer", pl_module: "pl.LightningModule") -> None:
        self._fitting = False
        if self.pruning is not None:
            if self._stepping:  # fit stopped between the pre-step and the end of the batch
                self.pruning.on_after_optimizer_step()
                self._stepping = False
            self.pruning.finalize()

    # ------------------------------------------------------------------ checkpoints
    def state_dict(self) -> dict[str, Any]:
        if self.pruning is None:
            return {} if self._pending_state is None else dict(self._pending_state)
        if self._stepping:
            raise PruningError("a Lightning checkpoint was taken inside an optimizer step; save between steps")
        state = self.pruning.state_dict()
        if self.pruning.sharded:
            # Lightning's ModelParallelStrategy / FSDPStrategy save callback state from rank 0 only: gather the
            # shards (masks: 1 byte per weight, on the CPU); any number of ranks loads the whole tensors
            state = whole_tensors(state)
        return state

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        # Lightning restores callbacks before on_fit_start builds the session, except with strategies that
        # restore after their setup (ModelParallelStrategy, FSDP): the session exists then and loads now
        if self._fitting and self.pruning is not None and state_dict:
            self.pruning.load_state_dict(state_dict)
            return
        self._pending_state = dict(state_dict) if state_dict else None

    # ------------------------------------------------------------------ metrics
    def sparsity_metrics(self) -> dict[str, float]:
        """``{"sparsity/<group>": element-wise sparsity of the group's live weights}``."""
        assert self.pruning is not None
        return group_sparsity_metrics(self.pruning)
