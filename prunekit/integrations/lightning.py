"""Lightning callbacks (the ``lightning`` extra): data sparsity of a trained model's copy.

* :class:`PostTrainingDataSparsity`: at ``on_fit_end``, sparsify a copy of the trained model.
* :class:`TrainingAwareDataSparsity`: at each epoch end, sparsify a copy with a data sparsifier
  whose config a data scheduler varies across epochs; squash the masks at train end.

Both leave the trained model untouched: the sparse copy is ``callback.sparsified`` (eval mode).

**How the model is found** (no attribute name is assumed):

1. ``model_attr`` when given: a dotted attribute path of the LightningModule (``"model"``,
   ``"backbone.encoder"``) or a function ``pl_module -> nn.Module``;
2. otherwise the LightningModule's single child module that holds all its parameters (the usual
   ``self.model = ...`` / ``self.net = ...`` wrapper; children without parameters, such as metrics,
   are ignored);
3. otherwise the LightningModule itself (copied without its trainer).

Every parameter of the found model (weights, biases, normalization parameters) is added to the
sparsifier under its ``named_parameters()`` name, unless ``data_names`` (regexes, ``re.search``)
narrows the selection.
"""

from __future__ import annotations

import copy
import logging
import re
import warnings
from typing import Any, Callable, Mapping, Sequence, Union

from torch import nn

try:
    import lightning.pytorch as pl
except ImportError:  # pragma: no cover - depends on what is installed
    try:
        import pytorch_lightning as pl  # type: ignore[no-redef]
    except ImportError as err:
        raise ImportError("prunekit.integrations.lightning needs Lightning: pip install 'prunekit[lightning]'") from err

from prunekit.data.base import BaseDataSparsifier
from prunekit.data.plain import from_plain, to_plain
from prunekit.registry import SCHEDULERS
from prunekit.schedulers.data import BaseDataScheduler

__all__ = ["PostTrainingDataSparsity", "TrainingAwareDataSparsity", "find_model"]

logger = logging.getLogger(__name__)

ModelLocator = Union[str, Callable[[Any], nn.Module], None]


# ---------------------------------------------------------------------------- shared helpers
def find_model(pl_module: nn.Module, model_attr: ModelLocator = None) -> nn.Module:
    """The model inside ``pl_module`` to sparsify (the rule is in the module docstring)."""
    if callable(model_attr):
        found = model_attr(pl_module)
        if not isinstance(found, nn.Module):
            raise TypeError(f"model_attr returned {type(found).__name__}; it must return the nn.Module to sparsify")
        return found
    if isinstance(model_attr, str):
        found: Any = pl_module
        for i, part in enumerate(model_attr.split(".")):
            if not hasattr(found, part):
                at = ".".join(model_attr.split(".")[:i]) or type(pl_module).__name__
                children = ", ".join(n for n, _ in found.named_children()) if isinstance(found, nn.Module) else ""
                raise AttributeError(
                    f"model_attr={model_attr!r}: {at} has no attribute {part!r}; its child modules: {children or '(none)'}"
                )
            found = getattr(found, part)
        if not isinstance(found, nn.Module):
            raise TypeError(f"model_attr={model_attr!r} is a {type(found).__name__}, not an nn.Module")
        return found
    if model_attr is not None:
        raise TypeError(f"model_attr must be an attribute path, a function or None, got {type(model_attr).__name__}")
    holders = [child for _, child in pl_module.named_children() if any(True for _ in child.parameters())]
    own = {id(p) for p in pl_module.parameters()}
    if len(holders) == 1 and {id(p) for p in holders[0].parameters()} == own:
        return holders[0]
    return pl_module


def _copy_model(model: nn.Module) -> nn.Module:
    # a LightningModule's __getstate__ drops its trainer, so deepcopy copies the network only
    return copy.deepcopy(model).eval()


def _attach(model: nn.Module, sparsifier: BaseDataSparsifier, patterns: Sequence[re.Pattern[str]]) -> list[str]:
    names = []
    for name, param in model.named_parameters():
        if patterns and not any(p.search(name) for p in patterns):
            continue
        sparsifier.add_data(name, param)  # an existing name keeps its config and mask
        names.append(name)
    if not names:
        listing = ", ".join(n for n, _ in model.named_parameters()) or "(none)"
        raise ValueError(f"no parameter of {type(model).__name__} matches data_names; its parameters: {listing}")
    return names


def _zero_fractions(sparsifier: BaseDataSparsifier, names: Sequence[str]) -> dict[str, float]:
    out = {}
    for name in names:
        mask = sparsifier.get_mask(name)
        out[name] = 1.0 - float(mask.float().mean()) if mask.numel() else 0.0
        logger.info("data sparsity of %s: %.2f%%", name, 100.0 * out[name])
    return out


def _compile(data_names: Sequence[str] | None) -> list[re.Pattern[str]]:
    if data_names is None:
        return []
    if isinstance(data_names, str):
        data_names = [data_names]
    return [re.compile(p) for p in data_names]


def _sparsifier_class(cls: Any) -> type[BaseDataSparsifier]:
    if not (isinstance(cls, type) and issubclass(cls, BaseDataSparsifier)):
        raise TypeError(
            f"data_sparsifier_class must be a BaseDataSparsifier subclass (the class, not an instance; the callback "
            f"creates it), got {cls!r}"
        )
    return cls


def _scheduler_class(cls: Any) -> type[BaseDataScheduler]:
    if isinstance(cls, str):
        cls = SCHEDULERS.get(cls)
    if not (isinstance(cls, type) and issubclass(cls, BaseDataScheduler)):
        raise TypeError(
            f"data_scheduler_class must be a BaseDataScheduler subclass or the registered name of one "
            f"(the callback creates it), got {cls!r}"
        )
    return cls


def _args(args: Mapping[str, Any] | None, what: str, reserved: str) -> dict[str, Any]:
    if args is None:
        return {}
    if not isinstance(args, Mapping):
        raise TypeError(f"{what} must be a mapping of keyword arguments, got {type(args).__name__}")
    if reserved in args:
        raise ValueError(f"{what} must not contain {reserved!r}: the callback fills it in; remove it")
    return copy.deepcopy(dict(args))


# ---------------------------------------------------------------------------- data sparsity
class PostTrainingDataSparsity(pl.Callback):
    """Sparsify a copy of the trained model at ``on_fit_end`` (the trained model is untouched).

    Args:
        data_sparsifier_class: a :class:`~prunekit.data.BaseDataSparsifier` subclass, created at
            ``on_fit_end`` with ``data_sparsifier_args`` (without ``data_list``).
        data_sparsifier_args: its keyword arguments, e.g. ``{"sparsity_level": 0.5}``.
        model_attr, data_names: which model and which of its parameters (module docstring).

    After fit: ``sparsified`` (the sparse copy, eval mode), ``data_sparsifier`` and ``sparsity``
    (data name -> fraction of zeros).
    """

    def __init__(
        self,
        data_sparsifier_class: type[BaseDataSparsifier],
        data_sparsifier_args: Mapping[str, Any] | None,
        *,
        model_attr: ModelLocator = None,
        data_names: Sequence[str] | None = None,
    ) -> None:
        super().__init__()
        self.data_sparsifier_class = _sparsifier_class(data_sparsifier_class)
        self.data_sparsifier_args = _args(data_sparsifier_args, "data_sparsifier_args", "data_list")
        self.model_attr = model_attr
        self.data_names = _compile(data_names)
        self.data_sparsifier: BaseDataSparsifier | None = None
        self.sparsified: nn.Module | None = None
        self.sparsity: dict[str, float] = {}

    def on_fit_end(self, trainer: Any, pl_module: Any) -> None:
        self.sparsified = _copy_model(find_model(pl_module, self.model_attr))
        self.data_sparsifier = self.data_sparsifier_class(**copy.deepcopy(self.data_sparsifier_args))
        names = _attach(self.sparsified, self.data_sparsifier, self.data_names)
        self.data_sparsifier.step()
        self.data_sparsifier.squash_mask()
        self.sparsity = _zero_fractions(self.data_sparsifier, names)


class TrainingAwareDataSparsity(pl.Callback):
    """Sparsify a copy of the model at every epoch end, with a data scheduler varying the config.

    Args:
        data_sparsifier_class, data_sparsifier_args: as for :class:`PostTrainingDataSparsity`.
        data_scheduler_class: a :class:`~prunekit.schedulers.data.BaseDataScheduler` subclass (or
            its registered name, e.g. ``"gamma"``), created at train start.
        data_scheduler_args: its keyword arguments without ``data_sparsifier`` (the callback
            passes the sparsifier), e.g. ``{"gamma": 2.0, "threshold_sl": 0.8}``.
        model_attr, data_names: which model and which of its parameters (module docstring).

    Hooks: ``on_train_start`` creates the sparsifier (holding a copy of the model) and the
    scheduler; ``on_train_epoch_start`` restores the sparsifier state saved at the previous epoch
    end; ``on_train_epoch_end`` copies the model, attaches the copy's parameters (their configs and
    masks carry over), calls ``data_sparsifier.step()`` then ``data_scheduler.step()`` and saves the
    sparsifier state; ``on_train_end`` squashes the masks into the last copy, ``sparsified``.
    ``history`` holds, per epoch, the scheduled values used and the fractions of zeros reached.

    The callback state (sparsifier and scheduler) is saved in Lightning checkpoints and restored
    on resume (``trainer.fit(..., ckpt_path=...)``); it is made of plain values and tensors, so the
    checkpoint loads with ``torch.load(..., weights_only=True)``. A checkpoint written before this
    callback's epoch-end work (for example by ``ModelCheckpoint`` after validation) is caught up at
    resume by running that epoch-end step on the restored weights, which are the weights it would
    have seen.
    """

    def __init__(
        self,
        data_sparsifier_class: type[BaseDataSparsifier],
        data_sparsifier_args: Mapping[str, Any] | None,
        data_scheduler_class: type[BaseDataScheduler] | str,
        data_scheduler_args: Mapping[str, Any] | None,
        *,
        model_attr: ModelLocator = None,
        data_names: Sequence[str] | None = None,
    ) -> None:
        super().__init__()
        self.data_sparsifier_class = _sparsifier_class(data_sparsifier_class)
        self.data_sparsifier_args = _args(data_sparsifier_args, "data_sparsifier_args", "data_list")
        self.data_scheduler_class = _scheduler_class(data_scheduler_class)
        self.data_scheduler_args = _args(data_scheduler_args, "data_scheduler_args", "data_sparsifier")
        self.model_attr = model_attr
        self.data_names = _compile(data_names)
        self.data_sparsifier: BaseDataSparsifier | None = None
        self.data_scheduler: BaseDataScheduler | None = None
        self.sparsified: nn.Module | None = None
        self.data_sparsifier_state_dict: dict[str, Any] | None = None
        self.sparsity: dict[str, float] = {}
        self.history: list[dict[str, Any]] = []
        self._epochs_done = 0
        self._pending: dict[str, Any] | None = None

    def on_train_start(self, trainer: Any, pl_module: Any) -> None:
        model = find_model(pl_module, self.model_attr)
        self.data_sparsifier = self.data_sparsifier_class(**copy.deepcopy(self.data_sparsifier_args))
        self.sparsified = _copy_model(model)
        _attach(self.sparsified, self.data_sparsifier, self.data_names)  # gives the scheduler its bases
        self.data_scheduler = self.data_scheduler_class(
            data_sparsifier=self.data_sparsifier, **copy.deepcopy(self.data_scheduler_args)
        )
        self.data_sparsifier_state_dict = None
        self._epochs_done = 0
        if self._pending is not None:
            self._restore(self._pending, trainer, model)
            self._pending = None

    def _restore(self, state: Mapping[str, Any], trainer: Any, model: nn.Module) -> None:
        assert self.data_sparsifier is not None and self.data_scheduler is not None
        history = from_plain(list(state.get("history", [])), "history")
        self.data_sparsifier.load_state_dict(state["data_sparsifier"], strict=True)
        self.data_scheduler.load_state_dict(state["data_scheduler"])
        self.data_sparsifier_state_dict = copy.deepcopy(state["data_sparsifier"])
        self._epochs_done = int(state["epochs_done"])
        self.history = history
        behind = int(trainer.current_epoch) - self._epochs_done
        if behind == 1:  # saved before this callback's epoch-end work on a completed epoch
            self._sparsify_epoch(model)
        elif behind != 0:
            warnings.warn(
                f"TrainingAwareDataSparsity: the checkpoint's callback state covers {self._epochs_done} epochs but "
                f"training resumes at epoch {trainer.current_epoch}; the data schedule continues from the saved state",
                UserWarning,
                stacklevel=2,
            )

    def on_train_epoch_start(self, trainer: Any, pl_module: Any) -> None:
        if self.data_sparsifier is not None and self.data_sparsifier_state_dict is not None:
            self.data_sparsifier.load_state_dict(self.data_sparsifier_state_dict, strict=True)

    def on_train_epoch_end(self, trainer: Any, pl_module: Any) -> None:
        self._sparsify_epoch(find_model(pl_module, self.model_attr))

    def _sparsify_epoch(self, model: nn.Module) -> None:
        assert self.data_sparsifier is not None and self.data_scheduler is not None
        self.sparsified = _copy_model(model)
        names = _attach(self.sparsified, self.data_sparsifier, self.data_names)
        param = self.data_scheduler.schedule_param
        used = {name: copy.deepcopy(self.data_sparsifier.data_groups[name].get(param)) for name in names}
        self.data_sparsifier.step()
        self.data_scheduler.step()
        self.data_sparsifier_state_dict = self.data_sparsifier.state_dict(include_data=False)
        self.sparsity = _zero_fractions(self.data_sparsifier, names)
        self.history.append({"epoch": self._epochs_done, param: used, "sparsity": dict(self.sparsity)})
        self._epochs_done += 1

    def on_train_end(self, trainer: Any, pl_module: Any) -> None:
        if self.data_sparsifier is not None:
            self.data_sparsifier.squash_mask()

    def state_dict(self) -> dict[str, Any]:
        if self.data_sparsifier is None or self.data_scheduler is None:
            return copy.deepcopy(self._pending) if self._pending is not None else {}
        return {
            "data_sparsifier": self.data_sparsifier.state_dict(include_data=False),
            "data_scheduler": self.data_scheduler.state_dict(),
            "epochs_done": self._epochs_done,
            "history": to_plain(self.history),
        }

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        if not state_dict:
            return
        missing = [k for k in ("data_sparsifier", "data_scheduler", "epochs_done") if k not in state_dict]
        if missing:
            raise ValueError(
                f"TrainingAwareDataSparsity.load_state_dict: missing {', '.join(missing)}; "
                f"load a checkpoint written with this callback"
            )
        self._pending = copy.deepcopy(dict(state_dict))


# weight pruning lives in its own module; it is part of this module's public API
from prunekit.integrations.lightning_pruning import PruningCallback  # noqa: E402

__all__ = [*__all__, "PruningCallback"]
