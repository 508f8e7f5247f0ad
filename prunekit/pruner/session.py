"""The pruning session: :class:`Pruning` and :func:`prepare_pruning`.

Two ways to drive it, with identical results:

* ``attach(optimizer)``: the session registers the optimizer's step pre/post hooks
  (``Optimizer.register_step_pre_hook`` / ``register_step_post_hook``; nothing is monkey-patched);
* the manual INC-style hooks: ``on_before_optimizer_step()`` after ``backward()`` and before
  ``optimizer.step()``, ``on_after_optimizer_step()`` right after it. ``on_train_begin``,
  ``on_step_begin``, ``on_step_end`` and ``on_train_end`` only check the order of calls.

**When events happen.** Every event, whatever the criterion, is computed and applied in the
pre-step hook of optimizer step ``g`` (gradients of step ``g`` present, weights unchanged since the
forward pass): so magnitude and gradient criteria share one code path and attach / manual hooks
give the same masks. The event of step ``g`` takes effect in optimizer step ``g`` itself (its
pruned gradients are zeroed before the update); once ``g + 1`` steps have completed, the masks of
every event ``<= g`` are in force and none of a later one. The forward pass of step ``g`` still
sees the weights of before the event. ``global_step`` advances in the post-step hook, so gradient
accumulation and evaluation passes never trigger an event twice. A step that
``torch.amp.GradScaler`` skips (inf/NaN gradients) never calls ``optimizer.step()``, so it is not
counted either.
"""

from __future__ import annotations

import warnings
from typing import Any, Literal, Mapping

import torch
from torch import nn

from prunekit.config import PruningConfig, load_config
from prunekit.errors import PruningError
from prunekit.pruner.group import PrunerGroup, PruningRecord
from prunekit.pruner.masks import reapply_needed
from prunekit.pruner.report import LayerReport, PruningReport
from prunekit.pruner.selection import select_layers, unwrap_model

__all__ = ["Pruning", "prepare_pruning", "STATE_FORMAT"]

#: version of the layout of :meth:`Pruning.state_dict`
STATE_FORMAT = 1


class Pruning:
    """A pruning session over ``model`` for every pruner group of ``config``.

    ``reapply``: ``"auto"`` applies the masks again after each optimizer step unless every attached
    optimizer is SGD, Adam or AdamW, for which zeroing the pruned gradients and optimizer state
    already keeps pruned weights exactly zero (see :mod:`prunekit.pruner.masks`); ``"always"``
    re-applies after every step. ``sync_masks``: broadcast rank 0's masks after each event (default:
    when ``torch.distributed`` is initialized with more than one rank).
    """

    def __init__(
        self,
        model: nn.Module,
        config: Any,
        *,
        reapply: Literal["auto", "always"] = "auto",
        sync_masks: bool | None = None,
    ) -> None:
        if reapply not in ("auto", "always"):
            raise ValueError(f"reapply must be 'auto' or 'always', got {reapply!r}")
        self.model = model
        self.config: PruningConfig = load_config(config)
        self.reapply = reapply
        self.sync_masks = sync_masks
        module = unwrap_model(model)
        self.groups: list[PrunerGroup] = []
        owner: dict[int, tuple[str, str]] = {}
        for group_cfg in self.config.pruners:
            layers = select_layers(module, group_cfg)
            for layer in layers:
                other = owner.get(id(layer.weight))
                if other is not None:
                    raise PruningError(
                        f"layer {layer.name!r} (weight of {other[1]!r}) is selected by pruner groups {other[0]!r} and "
                        f"{group_cfg.name!r}; a weight may belong to one group only: add it to excluded_op_names of one"
                    )
                owner[id(layer.weight)] = (str(group_cfg.name), layer.name)
            self.groups.append(PrunerGroup(group_cfg, layers))
        self.history: list[PruningRecord] = []
        self._step = 0
        self._optimizers: list[torch.optim.Optimizer] = []
        self._handles: list[Any] = []
        self._in_step = False
        self._finalized = False
        self._optimizer_steps_seen = 0

    # ------------------------------------------------------------------ properties
    @property
    def global_step(self) -> int:
        """Optimizer steps taken (starts at 0)."""
        return self._step

    @property
    def masks(self) -> dict[str, torch.Tensor]:
        """``{layer name: bool mask of the weight's shape}``, True = kept (fresh tensors, on the weight's device)."""
        out: dict[str, torch.Tensor] = {}
        for group in self.groups:
            out.update(group.masks)
        return out

    @property
    def attached(self) -> bool:
        return bool(self._handles)

    # ------------------------------------------------------------------ attach
    def attach(self, optimizer: torch.optim.Optimizer, *, hooks: bool = True) -> "Pruning":
        """Drive the session from ``optimizer``'s step pre/post hooks; returns ``self``.

        ``hooks=False`` registers no hook: the session only learns which optimizer steps the pruned
        weights (so events also zero its state for pruned entries), and the caller runs
        :meth:`on_before_optimizer_step` / :meth:`on_after_optimizer_step` itself. Use it where the
        step's gradients only exist inside ``optimizer.step(closure)`` (Lightning, LBFGS), or where a
        framework reports skipped steps as steps (the Hugging Face Trainer).
        """
        self._check_live("attach")
        if not isinstance(optimizer, torch.optim.Optimizer):
            raise PruningError(
                f"attach() needs the torch.optim.Optimizer that trains the model, got {type(optimizer).__name__}"
            )
        if self._optimizers:
            raise PruningError(
                "the session is already attached to an optimizer; one optimizer step is one pruning step, so attach "
                "only the optimizer that steps the pruned weights"
            )
        trained = {id(p) for g in optimizer.param_groups for p in g["params"]}
        layers = [(grp.name, l) for grp in self.groups for l in grp.layers if not l.frozen]
        missing = [f"{g}:{l.name}" for g, l in layers if id(l.weight) not in trained]
        if layers and len(missing) == len(layers):
            raise PruningError(
                "the optimizer passed to attach() trains none of the pruned weights; pass the optimizer built from "
                "this model's parameters (after wrapping it in DDP is fine: parameters are the same)"
            )
        if missing:
            warnings.warn(
                f"the attached optimizer does not train the pruned layers {', '.join(missing)}; their masks are applied "
                f"at events only. Add their parameters to the optimizer if they should train",
                stacklevel=2,
            )
        self._optimizers.append(optimizer)
        if hooks:
            self._handles.append(optimizer.register_step_pre_hook(lambda opt, args, kwargs: self._before_step()))
            self._handles.append(optimizer.register_step_post_hook(lambda opt, args, kwargs: self._after_step()))
        return self

    # ------------------------------------------------------------------ manual hooks
    def on_train_begin(self) -> None:
        """Start of training (checks only)."""
        self._check_live("on_train_begin")

    def on_step_begin(self, local_step: int | None = None) -> None:
        """Start of an iteration (INC passes ``local_step``; it is not needed). Checks only."""
        self._check_live("on_step_begin")
        if self._in_step:
            raise PruningError(
                "on_step_begin() called between on_before_optimizer_step() and on_after_optimizer_step(); "
                "call on_after_optimizer_step() right after optimizer.step()"
            )

    def on_before_optimizer_step(self) -> None:
        """After ``backward()``, before ``optimizer.step()``: scores, the step's event, gradient masking."""
        self._check_manual("on_before_optimizer_step")
        self._before_step()

    def on_after_optimizer_step(self) -> None:
        """Right after ``optimizer.step()``: masks re-applied, ``global_step`` advanced."""
        self._check_manual("on_after_optimizer_step")
        self._after_step()

    def on_step_end(self) -> None:
        """End of an iteration (checks only)."""
        self._check_live("on_step_end")
        if self._in_step:
            raise PruningError(
                "on_step_end() called after on_before_optimizer_step() without on_after_optimizer_step(); "
                "call on_after_optimizer_step() right after optimizer.step()"
            )

    def prune_now(self) -> PruningRecord | None:
        """Run the schedule for one step without training: the event of ``global_step`` (if any).

        For post-training pruning (a one-shot schedule at ``start_step`` 0 prunes here) and for
        stepping a schedule by hand. Counts as one step (``global_step`` advances); gradient
        criteria need gradients, so run ``loss.backward()`` first. Returns the event's record.
        """
        self._check_live("prune_now")
        before = len(self.history)
        self._before_step()
        self._after_step()
        self._optimizer_steps_seen -= 1  # no optimizer step was taken
        return self.history[-1] if len(self.history) > before else None

    def on_train_end(self) -> None:
        """End of training: warns when events were scheduled but no optimizer step was observed."""
        self._check_live("on_train_end")
        self._warn_if_never_stepped()

    # ------------------------------------------------------------------ the step
    def _check_live(self, what: str) -> None:
        if self._finalized:
            raise PruningError(f"{what}() after finalize(): the session is closed; build a new Pruning to prune again")

    def _check_manual(self, what: str) -> None:
        self._check_live(what)
        if self.attached:
            raise PruningError(
                f"{what}() called while the session is attached to an optimizer, which already runs it at every "
                f"optimizer.step(); remove the manual call, or do not attach()"
            )

    def _before_step(self) -> None:
        self._check_live("optimizer step")
        if self._in_step:
            raise PruningError(
                "two optimizer steps began without on_after_optimizer_step() in between; call "
                "on_before_optimizer_step() before and on_after_optimizer_step() after each optimizer.step()"
            )
        for group in self.groups:
            record = group.before_step(self._step, self._optimizers, self.sync_masks)
            if record is not None:
                self.history.append(record)
        self._in_step = True

    def _after_step(self) -> None:
        if not self._in_step:
            raise PruningError(
                "on_after_optimizer_step() without on_before_optimizer_step(): call on_before_optimizer_step() after "
                "loss.backward() and before optimizer.step()"
            )
        if self.reapply == "always" or reapply_needed(self._optimizers):
            for group in self.groups:
                group.reapply()
        self._step += 1
        self._optimizer_steps_seen += 1
        self._in_step = False

    def _warn_if_never_stepped(self) -> None:
        if self._optimizer_steps_seen == 0 and not self.history:
            warnings.warn(
                "no optimizer step was observed, so nothing was pruned: pass the optimizer to prepare_pruning() or "
                "attach(optimizer), or call on_before_optimizer_step()/on_after_optimizer_step() around optimizer.step()",
                stacklevel=3,
            )

    # ------------------------------------------------------------------ results
    @torch.no_grad()
    def report(self) -> PruningReport:
        """Per-layer rows; sparsity is the element-wise fraction of zeros of the live weights."""
        rows = []
        for group in self.groups:
            for layer in group.layers:
                w = layer.weight
                zeros = w.numel() - int(torch.count_nonzero(w))
                rows.append(
                    LayerReport(
                        name=layer.name,
                        pruner=group.name,
                        shape=tuple(w.shape),
                        pattern=group.config.pattern,
                        target=group.ratio,
                        final_target=group.config.target_sparsity,
                        sparsity=zeros / w.numel(),
                        numel=w.numel(),
                    )
                )
        return PruningReport(rows)

    def finalize(self) -> nn.Module:
        """Detach the optimizer hooks and apply the masks once more; pruned weights stay zero.

        Returns the (unwrapped) model; its ``state_dict()`` keys are those of the plain model.
        """
        self._check_live("finalize")
        if self._in_step:
            raise PruningError("finalize() between on_before_optimizer_step() and on_after_optimizer_step()")
        self._warn_if_never_stepped()
        for handle in self._handles:
            handle.remove()
        self._handles.clear()
        for group in self.groups:
            group.reapply()
        self._finalized = True
        return unwrap_model(self.model)

    # ------------------------------------------------------------------ state
    def state_dict(self) -> dict[str, Any]:
        """Everything needed to continue: step, config, per-group scheduler/masks/scores, history."""
        if self._in_step:
            raise PruningError("state_dict() during an optimizer step; save between steps")
        return {
            "format": STATE_FORMAT,
            "global_step": self._step,
            "config": self.config.model_dump(mode="json"),
            "groups": {group.name: group.state_dict() for group in self.groups},
            "history": [record.as_dict() for record in self.history],
        }

    def load_state_dict(self, state_dict: Mapping[str, Any]) -> None:
        """Restore :meth:`state_dict` into a session built with the same config on the same architecture."""
        self._check_live("load_state_dict")
        if state_dict.get("format") != STATE_FORMAT:
            raise PruningError(f"unsupported pruning state format {state_dict.get('format')!r} (expected {STATE_FORMAT})")
        saved, mine = state_dict["config"], self.config.model_dump(mode="json")
        if saved != mine:
            raise PruningError(
                f"the saved pruning state was made with a different config (saved: {saved}; now: {mine}); "
                f"build the session with the config it was saved with"
            )
        groups = state_dict["groups"]
        for group in self.groups:
            group.load_state_dict(groups[group.name])
        self._step = int(state_dict["global_step"])
        self._optimizer_steps_seen = self._step  # steps taken before the save count as observed
        self.history = [PruningRecord(**record) for record in state_dict["history"]]
        self._in_step = False

    def __repr__(self) -> str:
        names = ", ".join(f"{g.name}({len(g.layers)} layers)" for g in self.groups)
        return f"Pruning(step={self._step}, groups=[{names}], attached={self.attached})"


def prepare_pruning(
    model: nn.Module,
    config: Any,
    optimizer: torch.optim.Optimizer | None = None,
    **options: Any,
) -> Pruning:
    """Build a :class:`Pruning` session for ``model`` and ``config``; attach ``optimizer`` when given.

    Without an optimizer, drive it with the manual hooks (or call ``attach`` later).
    """
    session = Pruning(model, config, **options)
    if optimizer is not None:
        session.attach(optimizer)
    session.on_train_begin()
    return session
