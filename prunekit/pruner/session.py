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

import gc
import sys
import warnings
import weakref
from typing import Any, Literal, Mapping

import torch
from torch import nn

from prunekit.config import PruningConfig, load_config
from prunekit.errors import PruningError
from prunekit.pruner.group import PrunerGroup, PruningRecord
from prunekit.pruner.masks import apply_mask_, mask_optimizer_state_, reapply_needed
from torch.optim.optimizer import register_optimizer_step_post_hook
from prunekit.pruner.report import LayerReport, PruningReport
from prunekit.pruner.selection import select_layers, unwrap_model
from prunekit.pruner.sharding import global_counts
from prunekit.registry import PRUNERS

__all__ = ["Pruning", "prepare_pruning", "STATE_FORMAT"]

#: version of the layout of :meth:`Pruning.state_dict`
STATE_FORMAT = 1

#: ``id(weight) -> (weakref to the weight, weakref to the session, group name, layer name)``: which
#: live session prunes each weight, so a second session on the same layer is refused
_OWNERS: dict[int, tuple[weakref.ref, weakref.ref, str, str]] = {}


def _owner_of(weight: torch.Tensor) -> tuple["Pruning", str, str] | None:
    entry = _OWNERS.get(id(weight))
    if entry is None:
        return None
    weight_ref, session_ref, group, layer = entry
    session = session_ref()
    if weight_ref() is not weight or session is None or session._closed or session._finalized:
        del _OWNERS[id(weight)]
        return None
    return session, group, layer


class Pruning:
    """A pruning session over ``model`` for every pruner group of ``config``.

    ``reapply``: ``"auto"`` applies the masks again after each optimizer step unless every attached
    optimizer is SGD, Adam or AdamW, for which zeroing the pruned gradients and optimizer state
    already keeps pruned weights exactly zero (see :mod:`prunekit.pruner.masks`); ``"always"``
    re-applies after every step. ``sync_masks``: broadcast rank 0's masks after each event (default:
    when ``torch.distributed`` is initialized with more than one rank).

    **Guards.** A weight belongs to one live session (a second session on it is refused until the
    first is finalized or closed). An optimizer other than the attached one that steps the pruned
    weights (a new optimizer created mid-training) is a :class:`PruningError` at that step once
    something is pruned, and a warning before. A Parameter replaced after the session was built
    (``load_state_dict(..., assign=True)``) or resized is an error at the next step, report or save.
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
        if sync_masks is not None and not isinstance(sync_masks, bool):
            raise TypeError(f"sync_masks must be True, False or None, got {sync_masks!r}")
        self.model = model
        self.config: PruningConfig = load_config(config)
        self.reapply = reapply
        self.sync_masks = sync_masks
        module = unwrap_model(model)
        self.groups: list[PrunerGroup] = []
        owner: dict[int, tuple[str, str]] = {}
        for group_cfg in self.config.pruners:
            structured = None
            if group_cfg.pattern_spec.kind == "unit":  # coupled heads / channels across layers
                from prunekit.structure.pruner import StructuredPruner, select_units

                structured = StructuredPruner(group_cfg, module, select_units(module, group_cfg))
                layers = structured.layers
            else:
                layers = select_layers(module, group_cfg)
            if not layers:  # an INC-form group that selects nothing (warned): INC ran it as a no-op
                continue
            for layer in layers:
                other = owner.get(id(layer.weight))
                if other is not None:
                    raise PruningError(
                        f"layer {layer.name!r} (weight of {other[1]!r}) is selected by pruner groups {other[0]!r} and "
                        f"{group_cfg.name!r}; a weight may belong to one group only: add it to excluded_op_names of one"
                    )
                owner[id(layer.weight)] = (str(group_cfg.name), layer.name)
            self.groups.append(structured if structured is not None else PRUNERS.get(group_cfg.type)(group_cfg, layers))
        self._closed = False
        self._finalized = False
        self._claim_layers()
        self.history: list[PruningRecord] = []
        self._step = 0
        self._optimizers: list[torch.optim.Optimizer] = []
        self._handles: list[Any] = []
        #: the frame of the optimizer step in progress (hooks fire twice when a subclass calls super().step())
        self._step_frame: Any = None
        self._nested = 0
        self._in_step = False
        self._optimizer_steps_seen = 0
        #: True after detach(): no other optimizer's step is reported until the session is driven again
        self._paused = False
        self._layers = [(group, layer) for group in self.groups for layer in group.layers]
        self._warned: set[str] = set()
        self._global_hook = self._watch_other_optimizers()

    def _claim_layers(self) -> None:
        """Refuse layers another live session prunes; then record this session as their owner."""
        for group in self.groups:
            for layer in group.layers:
                found = _owner_of(layer.weight)
                if found is not None:
                    del found
                    gc.collect()  # an attached session nobody holds lives in a cycle with its optimizer until collected
                    found = _owner_of(layer.weight)
                if found is not None:
                    other, other_group, other_layer = found
                    raise PruningError(
                        f"layer {layer.name!r} (pruner {group.name!r}) is already pruned by another live session "
                        f"({other!r}, pruner {other_group!r}, layer {other_layer!r}); two sessions on one weight "
                        f"overwrite each other's masks (e.g. 4x1 then 2:4 satisfies neither). Call finalize() or "
                        f"close() on the first session, or exclude the layer from one of them"
                    )
        me = weakref.ref(self)
        for group in self.groups:
            for layer in group.layers:
                _OWNERS[id(layer.weight)] = (weakref.ref(layer.weight), me, group.name, layer.name)

    def _release_layers(self) -> None:
        for group in self.groups:
            for layer in group.layers:
                entry = _OWNERS.get(id(layer.weight))
                if entry is not None and entry[1]() is self:
                    del _OWNERS[id(layer.weight)]

    def _watch_other_optimizers(self) -> Any:
        """A process-wide optimizer step post-hook (a weak reference to the session): an optimizer other
        than the attached one that steps pruned weights outside the session's own steps (a new optimizer
        after the old one was attached) is reported (:meth:`_foreign_step`)."""
        me = weakref.ref(self)
        pruned = {id(layer.weight) for _, layer in self._layers}

        def hook(optimizer: torch.optim.Optimizer, args: Any, kwargs: Any) -> None:
            session = me()
            if session is not None:
                session._foreign_step(optimizer, pruned)

        return register_optimizer_step_post_hook(hook)

    # ------------------------------------------------------------------ properties
    @property
    def global_step(self) -> int:
        """Optimizer steps taken (starts at 0)."""
        return self._step

    @property
    def steps_to_complete(self) -> int:
        """Optimizer steps after which every group's last event has run: ``max(last event step) + 1``
        (event steps count from 0, so a schedule ending at step 150 needs 151 steps)."""
        return max((group.scheduler.last_event_step + 1 for group in self.groups), default=0)

    @property
    def masks(self) -> dict[str, torch.Tensor]:
        """``{layer name: bool mask of the weight's shape}``, True = kept (fresh tensors, on the weight's device)."""
        self._check_layers()
        out: dict[str, torch.Tensor] = {}
        for group in self.groups:
            out.update(group.masks)
        return out

    @property
    def sharded(self) -> bool:
        """True when FSDP2 shards some pruned layer (each rank holds its rows' masks and scores; see
        :mod:`prunekit.pruner.sharding`): save with :func:`prunekit.integrations.fsdp.save_pruning_state`."""
        return any(group.shard is not None for group in self.groups)

    @property
    def attached(self) -> bool:
        return bool(self._handles)

    @property
    def optimizer(self) -> torch.optim.Optimizer | None:
        """The optimizer the session is attached to (None when detached)."""
        return self._optimizers[0] if self._optimizers else None

    # ------------------------------------------------------------------ attach
    def attach(self, optimizer: torch.optim.Optimizer, *, hooks: bool = True) -> "Pruning":
        """Drive the session from ``optimizer``'s step pre/post hooks; returns ``self``.

        Attaching while attached re-attaches: the previous optimizer's hooks are removed, so after
        creating a new optimizer mid-training call ``attach(new_optimizer)``. Attaching applies the
        masks to the weights and to ``optimizer``'s state (pruned entries zeroed), so weights that
        grew back under an optimizer the session did not see are pruned again.

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
        if self._in_step and not self.attached:
            raise PruningError("attach() between on_before_optimizer_step() and on_after_optimizer_step(); attach between steps")
        self._check_layers()
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
        self._remove_optimizer_hooks()
        self._optimizers = [optimizer]
        self._in_step = False
        self._paused = False
        if hooks:
            self._handles.append(optimizer.register_step_pre_hook(lambda opt, args, kwargs: self._pre_hook()))
            self._handles.append(optimizer.register_step_post_hook(lambda opt, args, kwargs: self._post_hook()))
        with torch.no_grad():
            for group in self.groups:
                if group.has_pruned:
                    for layer in group.layers:
                        mask = group.mask8[layer.name]
                        apply_mask_(layer.weight, mask)
                        mask_optimizer_state_(self._optimizers, layer.weight, mask)
        return self

    def detach(self) -> "Pruning":
        """Stop driving the session from the attached optimizer (its hooks are removed); returns ``self``.

        The masks stay in force as they are (the weights are not touched). The session pauses: no
        event runs and nothing is checked until :meth:`attach` or the manual hooks drive it again.
        """
        self._check_live("detach")
        self._remove_optimizer_hooks()
        self._optimizers = []
        self._in_step = False
        self._paused = True
        return self

    def _pre_hook(self) -> None:
        """The optimizer's step pre-hook. An optimizer subclass whose ``step`` calls ``super().step()``
        runs the hooks twice per step (both methods are wrapped): the inner call is recognised by the
        outer call's frame still being on the stack, and skipped with its post-hook."""
        caller = sys._getframe(2)  # torch's wrapper that calls the hooks (via the registered lambda)
        outer = self._step_frame
        if outer is not None:
            frame, depth = caller.f_back, 0
            while frame is not None and depth < 64:
                if frame is outer:
                    self._nested += 1
                    return
                frame, depth = frame.f_back, depth + 1
        self._step_frame, self._nested = caller, 0
        self._before_step()

    def _post_hook(self) -> None:
        if self._nested:
            self._nested -= 1
            return
        self._step_frame = None
        self._after_step()

    def _remove_optimizer_hooks(self) -> None:
        for handle in self._handles:
            handle.remove()
        self._handles.clear()
        self._step_frame, self._nested = None, 0

    # ------------------------------------------------------------------ manual hooks
    def on_train_begin(self, dataloader: Any = None) -> None:
        """Start of training (checks only; INC's ``dataloader`` argument is accepted and not needed)."""
        self._check_live("on_train_begin")
        self._check_layers()

    def on_epoch_begin(self, epoch: int | None = None) -> None:
        """Start of an epoch (INC's hook; checks only: steps, not epochs, drive the schedule)."""
        self._check_live("on_epoch_begin")

    def on_epoch_end(self) -> None:
        """End of an epoch (INC's hook; checks only)."""
        self._check_live("on_epoch_end")

    def on_before_eval(self) -> None:
        """Before an evaluation pass (INC's hook). Nothing to do: evaluation never counts as a step and
        pruned weights are zero in place, so the evaluated model is the pruned one."""
        self._check_live("on_before_eval")

    def on_after_eval(self) -> None:
        """After an evaluation pass (INC's hook; nothing to do)."""
        self._check_live("on_after_eval")

    def on_step_begin(self, local_step: int | None = None) -> None:
        """Start of an iteration (INC passes ``local_step``; it is not needed).

        Between ``on_before_optimizer_step()`` and ``on_after_optimizer_step()`` it means the
        optimizer step did not happen (``optimizer.step()`` raised): the step is retried.
        """
        self._check_live("on_step_begin")
        self._in_step = False

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
        if self._in_step and not self.attached:
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
        if self._in_step and not self.attached:
            raise PruningError("prune_now() inside an optimizer step; call it between steps")
        before = len(self.history)
        self._before_step()
        self._after_step(stepped=False)
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
        if self._closed:
            raise PruningError(f"{what}() after close(): the session is closed; build a new Pruning to prune again")

    def _check_manual(self, what: str) -> None:
        self._check_live(what)
        if self.attached:
            raise PruningError(
                f"{what}() called while the session is attached to an optimizer, which already runs it at every "
                f"optimizer.step(); remove the manual call, or do not attach()"
            )

    def _check_layers(self) -> None:
        for group in self.groups:
            group.check_layers()

    def _before_step(self) -> None:
        self._check_live("optimizer step")
        if self._in_step:
            # the previous optimizer step began but never finished: optimizer.step() raised after the
            # pre-step work (with hooks, torch runs the post-step hook only when step() returns)
            if not self.attached:
                warnings.warn(
                    f"on_before_optimizer_step() again without on_after_optimizer_step(): optimizer step "
                    f"{self._step} is retried (expected when optimizer.step() raised; otherwise call "
                    f"on_after_optimizer_step() right after every optimizer.step())",
                    stacklevel=3,
                )
            self._in_step = False
        self._check_layers()
        self._paused = False
        for group in self.groups:
            record = group.before_step(self._step, self._optimizers, self.sync_masks)
            if record is not None:
                self.history.append(record)
        self._in_step = True

    def _after_step(self, stepped: bool = True) -> None:
        if not self._in_step:
            raise PruningError(
                "on_after_optimizer_step() without on_before_optimizer_step(): call on_before_optimizer_step() after "
                "loss.backward() and before optimizer.step()"
            )
        for group in self.groups:
            group.after_step(self._step, stepped)
        if self.reapply == "always" or reapply_needed(self._optimizers):
            for group in self.groups:
                group.reapply()
        self._step += 1
        self._optimizer_steps_seen += 1
        self._in_step = False

    # ------------------------------------------------------------------ guards
    def _foreign_step(self, optimizer: torch.optim.Optimizer, pruned: set[int]) -> None:
        """Any optimizer's step just ended: one the session is not attached to, stepping pruned weights
        outside the session's steps, means events stop and (once something is pruned) pruned weights
        grow back. An error once something is pruned, else a warning; both say to re-attach.

        Steps inside the session's own step (an optimizer calling another one's ``step()``, e.g. SAM
        around its base optimizer) and sessions that are paused (:meth:`detach`) are not reported.
        """
        if self._closed or self._finalized or self._paused or self._in_step or optimizer in self._optimizers:
            return
        if not any(id(p) in pruned for group in optimizer.param_groups for p in group["params"]):
            return
        name = type(optimizer).__name__
        attached = type(self._optimizers[0]).__name__ if self._optimizers else None
        where = f"the session is attached to another optimizer ({attached})" if attached else "the session is not attached to it"
        fix = "call pruning.attach(optimizer) with the optimizer that trains the model (re-attaching applies the masks again)"
        if any(group.has_pruned for group in self.groups):
            raise PruningError(
                f"an optimizer ({name}) stepped pruned weights, but {where} (step {self._step}): its steps are not "
                f"pruning steps, and pruned weights grow back under it; {fix}, or detach()/finalize() the session "
                f"if pruning is over"
            )
        self._warn_once(
            "foreign",
            f"an optimizer ({name}) stepped the weights of the pruning session, but {where} (step {self._step}): "
            f"pruning events only run on the steps of the attached optimizer; {fix}",
        )

    def _warn_once(self, key: str, message: str) -> None:
        if key not in self._warned:
            self._warned.add(key)
            warnings.warn(message, stacklevel=4)

    @property
    def _never_stepped(self) -> bool:
        """No optimizer step observed and nothing pruned (by prune_now either)."""
        return self._optimizer_steps_seen == 0 and not self.history

    def _warn_if_never_stepped(self) -> None:
        if self._never_stepped:
            warnings.warn(
                "no optimizer step was observed, so nothing was pruned: pass the optimizer to prepare_pruning() or "
                "attach(optimizer), or call on_before_optimizer_step()/on_after_optimizer_step() around optimizer.step()",
                stacklevel=3,
            )

    def _warn_if_schedule_unfinished(self) -> None:
        if self._never_stepped:
            return  # warned by _warn_if_never_stepped
        unfinished = [g for g in self.groups if g.scheduler.last_event_step >= self._step]
        if unfinished:
            details = ", ".join(f"{g.name} (last event at step {g.scheduler.last_event_step}, at {g.ratio:.4f} of target "
                                f"{g.final_target})" for g in unfinished)
            warnings.warn(
                f"finalize() after {self._step} optimizer steps, before the schedule ended: {details}. Event steps count "
                f"from 0, so a schedule ending at step N needs N + 1 steps (Trainer / Lightning max_steps >= "
                f"{self.steps_to_complete}); train longer or move end_step earlier",
                UserWarning,
                stacklevel=3,
            )

    # ------------------------------------------------------------------ results
    @torch.no_grad()
    def report(self) -> PruningReport:
        """Per-layer rows; sparsity is the element-wise fraction of zeros of the live weights.

        Layers FSDP2 shards are reported whole (zeros summed over the ranks: every rank must call it)."""
        self._check_layers()
        rows = []
        for group in self.groups:
            local = [layer.numel - int(torch.count_nonzero(layer.data)) for layer in group.layers]
            zeros = global_counts(local, group.shard, [layer.shard is not None for layer in group.layers])
            for layer, zero in zip(group.layers, zeros):
                rows.append(
                    LayerReport(
                        name=layer.name,
                        pruner=group.name,
                        shape=tuple(layer.weight.shape),
                        pattern=group.pattern_label,
                        target=group.ratio,
                        final_target=group.final_target,
                        sparsity=zero / layer.total_numel if layer.total_numel else 0.0,
                        numel=layer.total_numel,
                        scope=str(group.config.scope),
                    )
                )
        return PruningReport(rows)

    def finalize(self) -> nn.Module:
        """Detach the optimizer hooks and apply the masks once more; pruned weights stay zero.

        Returns the (unwrapped) model; its ``state_dict()`` keys are those of the plain model.
        """
        self._check_live("finalize")
        if self._in_step and not self.attached:
            raise PruningError("finalize() between on_before_optimizer_step() and on_after_optimizer_step()")
        self._check_layers()
        self._warn_if_never_stepped()
        self._warn_if_schedule_unfinished()
        for group in self.groups:
            group.reapply()
        self._end()
        self._finalized = True
        return unwrap_model(self.model)

    def close(self) -> None:
        """End the session without touching the weights: hooks removed, layers free for another session.

        For a session abandoned mid-way (a crashed run restarted in the same process); use
        :meth:`finalize` at the end of training. Closing twice is allowed.
        """
        if self._closed or self._finalized:
            return
        self._end()
        self._closed = True

    def _end(self) -> None:
        self._remove_optimizer_hooks()
        self._global_hook.remove()
        self._release_layers()
        self._in_step = False

    # ------------------------------------------------------------------ state
    def state_dict(self) -> dict[str, Any]:
        """Everything needed to continue: step, config, per-group scheduler/masks/scores, history.

        Only tensors and plain Python values: it loads with ``torch.load(..., weights_only=True)``.
        """
        if self._in_step and not self.attached:
            raise PruningError("state_dict() during an optimizer step; save between steps")
        self._check_layers()
        return {
            "format": STATE_FORMAT,
            "global_step": self._step,
            "config": self.config.model_dump(mode="json"),
            "groups": {group.name: group.state_dict() for group in self.groups},
            "history": [record.as_dict() for record in self.history],
        }

    def load_state_dict(self, state_dict: Mapping[str, Any]) -> None:
        """Restore :meth:`state_dict` into a session built with the same config on the same architecture.

        The whole state is checked before anything changes: a refused state raises
        :class:`PruningError` listing every problem and leaves the model, the optimizer and the
        session exactly as they were.
        """
        self._check_live("load_state_dict")
        self._check_layers()
        problems = self._check_state(state_dict)
        if problems:
            raise PruningError("the pruning state cannot be loaded (nothing was changed):\n  " + "\n  ".join(problems))
        history = [PruningRecord.from_dict(record) for record in state_dict["history"]]
        for group in self.groups:
            group.apply_state(state_dict["groups"][group.name])
        self._step = int(state_dict["global_step"])
        self._optimizer_steps_seen = self._step  # steps taken before the save count as observed
        self.history = history
        self._in_step = False

    def _check_state(self, state: Any) -> list[str]:
        if not isinstance(state, Mapping):
            return [f"expected the mapping Pruning.state_dict() returns, got {type(state).__name__}"]
        if state.get("format") != STATE_FORMAT:
            return [f"format: unsupported pruning state format {str(state.get('format'))[:40]!r} (expected {STATE_FORMAT})"]
        missing = [k for k in ("global_step", "config", "groups", "history") if k not in state]
        if missing:
            return [f"missing key(s) {', '.join(missing)}; pass what Pruning.state_dict() returned"]
        problems: list[str] = []
        saved, mine = state["config"], self.config.model_dump(mode="json")
        if saved != mine:
            problems.append(
                f"config: the state was made with a different config (saved: {str(saved)[:600]}; now: {str(mine)[:600]}); "
                f"build the session with the config it was saved with"
            )
        step = state["global_step"]
        if isinstance(step, bool) or not isinstance(step, int) or step < 0:
            problems.append(f"global_step: expected an integer >= 0, got {str(step)[:60]!r}")
        groups = state["groups"]
        if not isinstance(groups, Mapping):
            problems.append(f"groups: expected a mapping of group name to group state, got {type(groups).__name__}")
        else:
            names = [group.name for group in self.groups]
            problems += [f"groups[{str(n)[:60]!r}]: no such pruner group (groups: {', '.join(names)})" for n in groups if n not in names]
            for group in self.groups:
                if group.name not in groups:
                    problems.append(f"groups[{group.name!r}]: missing")
                    continue
                found = group.check_state(groups[group.name], f"groups[{group.name!r}]")
                last = groups[group.name].get("scheduler", {}).get("last_step") if not found else None
                if isinstance(last, int) and isinstance(step, int) and last > step:
                    found.append(
                        f"groups[{group.name!r}].scheduler.last_step: the event of step {last} fired after the saved "
                        f"global_step {step}; the state is inconsistent (edited or corrupted): save it again"
                    )
                problems += found
        history = state["history"]
        if not isinstance(history, (list, tuple)):
            problems.append(f"history: expected a list of event records, got {type(history).__name__}")
        else:
            for i, record in enumerate(history):
                try:
                    PruningRecord.from_dict(record)
                except ValueError as err:
                    problems.append(f"history[{i}]: {err}")
        return problems

    def __repr__(self) -> str:
        names = ", ".join(f"{g.name}({len(g.layers)} layers)" for g in self.groups)
        return f"Pruning(step={self._step}, groups=[{names}], attached={self.attached})"


def prepare_pruning(
    model: nn.Module,
    config: Any,
    optimizer: torch.optim.Optimizer | None = None,
    *,
    dataloader: Any = None,
    loss_func: Any = None,
    device: Any = None,
    **options: Any,
) -> Pruning:
    """Build a :class:`Pruning` session for ``model`` and ``config``; attach ``optimizer`` when given.

    Without an optimizer, drive it with the manual hooks (or call ``attach`` later).

    INC's post-training form: with ``dataloader`` (calibration batches) and one-shot groups
    (``sparse_gpt``, ``wanda``, ``magnitude``; INC's ``pruning_type: sparse_gpt``) the model is pruned
    at once by :func:`prunekit.oneshot` (on ``device``), and the session returned keeps exactly the
    resulting zeros (``pattern_lock``) while the model is fine-tuned. ``loss_func`` is accepted for
    INC's signature and not used (a warning says so); ``device`` and ``loss_func`` without a
    ``dataloader`` are an error.
    """
    if dataloader is not None:
        if loss_func is not None:
            warnings.warn("prepare_pruning: loss_func is not used; one-shot pruning needs no loss (INC used it for retrain_free only)", UserWarning, stacklevel=2)
        return _prepare_oneshot(model, config, optimizer, dataloader, device, options)
    if device is not None or loss_func is not None:
        raise TypeError("prepare_pruning: device= and loss_func= belong to the post-training form with dataloader=; "
                        "for training-time pruning move the model yourself and drop them")
    session = Pruning(model, config, **options)
    if optimizer is not None:
        session.attach(optimizer)
    session.on_train_begin()
    return session


def _prepare_oneshot(model: nn.Module, config: Any, optimizer: torch.optim.Optimizer | None, dataloader: Any, device: Any, options: dict[str, Any]) -> Pruning:
    """INC's post-training form: the locking session is built first (its options checked, its layers
    claimed), then the model is pruned once; if pruning fails the session is closed and the model
    restored, so a refused call changes nothing."""
    from prunekit.post_training import lock_config, oneshot, oneshot_layers
    from prunekit.pruner.types.oneshot import ONESHOT_TYPES

    loaded = load_config(config)
    if not any(group.type in ONESHOT_TYPES for group in loaded.pruners):
        raise PruningError(
            "prepare_pruning(..., dataloader=...) prunes once from calibration data, which needs a one-shot group "
            "(type sparse_gpt, wanda or magnitude; INC's pruning_type: sparse_gpt); for training-time pruning pass "
            "the optimizer instead"
        )
    session = Pruning(model, lock_config(oneshot_layers(model, loaded)), **options)
    try:
        oneshot(model, loaded, dataloader, device=device)
    except BaseException:
        session.close()
        raise
    if optimizer is not None:
        session.attach(optimizer)
    session.on_train_begin()
    session.prune_now()  # lock the zeros now: the first optimizer step must not move them
    return session
