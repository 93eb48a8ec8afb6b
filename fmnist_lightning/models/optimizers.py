"""Optimizers torch lacks, for ``conf/optimizer/``: ``ConvMuon``, Muon on the convolution filters and Adam
on every other parameter, as one ``torch.optim.Optimizer``."""

from __future__ import annotations

import numbers
import weakref
from collections import ChainMap
from collections.abc import Callable, Iterable, Sequence
from functools import partial
from typing import Any

import torch

from fmnist_lightning.errors import require

#: The filters' logical order, ``(out_channels, in_channels, kh, kw)``: that of the momentum buffers in
#: ``state_dict``, whatever the memory format.
LOGICAL = (0, 1, 2, 3)


class InnerStates(ChainMap):
    """The inner optimizers' states as one mapping (``ConvMuon.state``). A read looks in each state that
    holds the key, where a ``ChainMap``'s would ask each in turn, and the first, a ``defaultdict``, would
    create an empty entry for every key of the others (Lightning's ``_optimizer_to_device`` reads every
    entry on a resume; the next ``state_dict`` then failed with a ``KeyError``). An assignment goes to
    the state of the optimizer whose parameter the key is, where a ``ChainMap``'s goes to the first.

    Raises:
        KeyError: An assignment for a tensor that is no parameter of the inner optimizers.
    """

    def __init__(self, optimizers: Sequence[torch.optim.Optimizer]) -> None:
        super().__init__(*(optimizer.state for optimizer in optimizers))
        self.optimizers = optimizers

    def __getitem__(self, key: Any) -> Any:
        for state in self.maps:
            if key in state:
                return state[key]
        return self.__missing__(key)

    def __setitem__(self, key: Any, value: Any) -> None:
        for optimizer in self.optimizers:
            if any(p is key for group in optimizer.param_groups for p in group["params"]):
                optimizer.state[key] = value
                return
        raise KeyError(f"a tensor of shape {tuple(getattr(key, 'shape', ()))} is no parameter of this ConvMuon")


class ConvMuon(torch.optim.Optimizer):
    """Muon (Jordan et al., 2024) on every 4-D convolution filter, flattened to a matrix, and Adam on every
    other parameter (biases, BatchNorm, linear layers), with one learning rate for both: airbench's recipe
    (Keller Jordan's cifar10-airbench, ``airbench94_muon.py``: Muon on the filters, SGD on the rest) as a
    single optimizer that Hydra builds from ``conf/optimizer/muon.yaml`` and any LR scheduler drives.

    Each trainable ``(out, in, kh, kw)`` filter reaches an inner ``torch.optim.Muon`` as a 2-D proxy: a
    detached view of the filter's own memory, ``(out, in·kh·kw)``, so Muon's in-place update is the filter's.
    Its columns follow the memory layout: ``(in, kh, kw)`` for a contiguous filter, ``(kh, kw, in)`` for
    ``channels_last`` (the project's default), where ``filter.view(out, -1)`` would fail. The column order
    does not matter: Muon orthogonalises the momentum ``M`` by a Newton–Schulz iteration, ``X ← aX +
    b(XXᵀ)X + c(XXᵀ)²X`` from ``X = M / ‖M‖_F``, and for a permutation matrix ``P``, ``(XP)(XP)ᵀ = XXᵀ``
    and ``‖XP‖_F = ‖X‖_F``, so the iterates of ``MP`` are those of ``M`` times ``P`` (likewise for the
    transposed form used when ``out > in·kh·kw``): the update of every weight is the same in either order,
    up to floating-point rounding. The momentum is per weight, and the learning-rate adjustment depends
    on the shape alone. After backward, each proxy's ``.grad`` is a view of its filter's ``.grad`` (a
    gradient hook links them), so whatever acts on ``param_groups``' gradients before ``step`` (Lightning's
    gradient clipping, AMP's ``GradScaler.unscale_``) acts on the filters' too.

    One learning rate: with ``adjust_lr_fn="match_rms_adamw"`` (Liu et al., 2025, "Muon is Scalable for
    LLM Training", arXiv:2502.16982), Muon scales an ``(A, B)`` filter's orthogonalised update (RMS about
    ``1/√max(A, B)``) by ``0.2·√max(A, B)``, to an RMS of about 0.2, that of a typical Adam update, so one
    ``lr`` suits both. ``param_groups`` are the inner optimizers' own group dicts (Muon's, then Adam's): a
    scheduler writing ``group["lr"]`` (``OneCycleLR`` with one ``max_lr``) drives both. ``defaults`` hold
    ``momentum`` and no ``betas``, so a scheduler that cycles momentum (``OneCycleLR``'s
    ``cycle_momentum``) cycles Muon's; Adam's betas stay as given. Weight decay is decoupled in both,
    ``θ ← θ·(1 − lr·weight_decay)`` (Muon's own; Adam's with ``decoupled_weight_decay``, i.e. AdamW).
    Unlike airbench's Muon, the filters are not renormalised after each step. Newton–Schulz runs in
    bfloat16 whatever the parameters' dtype (``torch.optim.Muon``'s choice, as Jordan's), so autocast
    (``bf16-mixed``, ``16-mixed``) does not change Muon's steps.

    ``state_dict`` is torch's format over ``param_groups`` (indices: Muon's filters, then Adam's
    parameters), each momentum buffer in the filter's logical ``(out, in·kh·kw)`` order, so a checkpoint
    loads bit-exactly whatever the memory format. Parameters with ``requires_grad=False`` when it is built
    belong to neither optimizer and are never changed (nor is one unfrozen later). A filter whose memory
    was replaced after building (``model.to(device)``: this project builds the optimizer before Lightning
    moves the model; or another memory format) is followed: its proxy and momentum buffer are rebuilt at
    the next backward, ``state_dict`` or step.

    Sources: K. Jordan et al., "Muon: An optimizer for hidden layers in neural networks" (2024,
    https://kellerjordan.github.io/posts/muon/) and https://github.com/KellerJordan/cifar10-airbench;
    ``torch.optim.Muon`` (its Newton–Schulz coefficients and ``eps``); Liu et al. (2025), above.

    Args:
        params: The model's parameters (tensors; no parameter groups), e.g. ``model.parameters()``.
        lr: Learning rate of both (Muon's before ``adjust_lr_fn``).
        weight_decay: Decoupled weight decay of both.
        momentum: Muon's momentum.
        nesterov: Muon's Nesterov momentum.
        ns_steps: Muon's Newton–Schulz iterations.
        adjust_lr_fn: ``torch.optim.Muon``'s learning-rate adjustment: ``match_rms_adamw`` (above),
            ``original`` (Jordan's ``√max(1, A/B)``, its own ``lr``), or another it accepts.
        betas: Adam's ``(beta1, beta2)``.
        fused: Adam's fused kernel (``conf/optimizer/adam.yaml``); ``False``: torch's default kernel.

    Raises:
        ArgumentError: ``lr`` or ``weight_decay`` < 0, ``momentum`` outside [0, 1), ``nesterov`` or ``fused``
            not a bool, ``ns_steps`` not an integer in [1, 99], ``adjust_lr_fn`` one ``torch.optim.Muon``
            refuses, ``betas`` not two numbers in [0, 1), ``params`` a parameter group, no parameter with
            ``requires_grad``, or a filter whose ``out_channels`` are not outermost in memory (neither
            contiguous nor ``channels_last``; also raised at the step after such a change).
        NotImplementedError: ``add_param_group``: the parameters are given once, when it is built.
        ValueError: ``load_state_dict`` of another optimizer's or model's state.

    >>> net = torch.nn.Sequential(torch.nn.Conv2d(1, 4, 3), torch.nn.Flatten(), torch.nn.Linear(4, 2))
    >>> optimizer = ConvMuon(net.parameters(), lr=1e-3)
    >>> [tuple(p.shape) for group in optimizer.param_groups for p in group["params"]]
    [(4, 9), (4,), (2, 4), (2,)]
    """

    def __init__(
        self,
        params: Iterable[torch.Tensor],
        lr: float = 1e-3,
        weight_decay: float = 0.0,
        momentum: float = 0.95,
        nesterov: bool = True,
        ns_steps: int = 5,
        adjust_lr_fn: str | None = "match_rms_adamw",
        betas: Sequence[float] = (0.9, 0.999),
        fused: bool = False,
    ) -> None:
        params = list(params)
        _check_arguments(lr, weight_decay, momentum, nesterov, ns_steps, adjust_lr_fn, betas, fused)
        not_tensor = next((p for p in params if not isinstance(p, torch.Tensor)), None)
        require(not_tensor is None, "params", f"a {type(not_tensor).__name__}", "tensors, not parameter groups")
        trainable = [p for p in params if p.requires_grad]
        require(bool(trainable), "params", f"{len(params)} frozen", "at least one with requires_grad=True")
        filters = [p for p in trainable if p.ndim == 4]
        views = [_filter_view(f) for f in filters]
        others = [p for p in trainable if p.ndim != 4]
        muon_options = {"momentum": momentum, "nesterov": nesterov, "ns_steps": ns_steps, "adjust_lr_fn": adjust_lr_fn}
        adam_options = {"betas": tuple(betas), "fused": True if fused else None, "decoupled_weight_decay": True}
        inner: list[torch.optim.Optimizer] = []
        if filters:
            inner.append(torch.optim.Muon([v for v, _ in views], lr, weight_decay, **muon_options))
        if others:
            inner.append(torch.optim.Adam(others, lr, weight_decay=weight_decay, **adam_options))
        super().__init__(trainable, {"lr": lr, "weight_decay": weight_decay, **muon_options, "fused": fused})
        # Lists changed in place only: Lightning's LightningOptimizer holds a copy of this __dict__.
        self._filters, self._layouts = filters, [layout for _, layout in views]
        self._muon, self._inner = (inner[0] if filters else None), inner
        self.param_groups = [group for optimizer in inner for group in optimizer.param_groups]
        self.state = InnerStates(inner)
        hooks = [
            f.register_post_accumulate_grad_hook(partial(_after_backward, weakref.ref(self), i))
            for i, f in enumerate(filters)
        ]
        weakref.finalize(self, _remove_hooks, hooks)

    def add_param_group(self, param_group: dict[str, Any]) -> None:
        """``torch.optim.Optimizer``'s during construction; refused afterwards.

        Raises:
            NotImplementedError: Once built.
        """
        if "_inner" in self.__dict__:
            raise NotImplementedError("ConvMuon takes its parameters once, when it is built: build a new one")
        super().add_param_group(param_group)

    @torch.no_grad()
    def step(self, closure: Callable[[], Any] | None = None) -> Any:
        """One step of Muon on the filters and Adam on the rest, after ``closure`` (evaluated with gradients
        on, as Lightning passes one); returns the closure's loss, or ``None``."""
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        for index in range(len(self._filters)):
            self._link_grad(index)
        for optimizer in self._inner:
            optimizer.step()
        return loss

    def zero_grad(self, set_to_none: bool = True) -> None:
        """Clears the gradients of every parameter, filters included, and of the proxies."""
        super().zero_grad(set_to_none)
        for f in self._filters:
            if f.grad is not None:
                f.grad = None if set_to_none else f.grad.detach().zero_()

    def state_dict(self) -> dict[str, Any]:
        """Both optimizers' states in torch's format, momentum buffers in the filters' logical order."""
        self._follow_filters()
        state: dict[int, Any] = {}
        groups: list[dict[str, Any]] = []
        for optimizer in self._inner:
            saved = optimizer.state_dict()
            offset = sum(len(group["params"]) for group in groups)
            for index, entry in saved["state"].items():
                if optimizer is self._muon:
                    entry = {
                        **entry,
                        "momentum_buffer": self._reorder(index, entry["momentum_buffer"], to_logical=True),
                    }
                state[offset + index] = entry
            groups += [{**group, "params": [offset + i for i in group["params"]]} for group in saved["param_groups"]]
        return {"state": state, "param_groups": groups}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        """Loads a ``state_dict`` of a ``ConvMuon`` over the same parameters (in any memory format).

        Raises:
            ValueError: It has other parameter groups (another optimizer's) or group sizes (another model's).
        """
        self._follow_filters()
        saved_groups = state_dict["param_groups"]
        if len(saved_groups) != len(self._inner):
            raise ValueError(
                f"the optimizer state has {len(saved_groups)} parameter groups, this ConvMuon "
                f"{len(self._inner)} (Muon's filters, then Adam's other parameters): it is another optimizer's"
            )
        for optimizer, group in zip(self._inner, saved_groups, strict=True):
            ids = group["params"]
            optimizer.load_state_dict(
                {
                    "state": {i: state_dict["state"][j] for i, j in enumerate(ids) if j in state_dict["state"]},
                    "param_groups": [{**group, "params": list(range(len(ids)))}],
                }
            )
        if self._muon is not None:
            for index, proxy in enumerate(self._muon.param_groups[0]["params"]):
                entry = self._muon.state.get(proxy)
                if entry and "momentum_buffer" in entry:
                    entry["momentum_buffer"] = self._reorder(index, entry["momentum_buffer"], to_logical=False)
        # torch's load_state_dict replaced the inner optimizers' group dicts and state.
        self.param_groups[:] = [group for optimizer in self._inner for group in optimizer.param_groups]
        self.state.maps[:] = [optimizer.state for optimizer in self._inner]

    def _reorder(self, index: int, buffer: torch.Tensor, to_logical: bool) -> torch.Tensor:
        """Filter ``index``'s ``(out, in·kh·kw)`` momentum ``buffer`` from its layout's column order to the
        logical one (``to_logical``), or back."""
        layouts = (self._layouts[index], LOGICAL) if to_logical else (LOGICAL, self._layouts[index])
        return _as_matrix(_as_filter(buffer, layouts[0], self._filters[index].shape), layouts[1])

    def _proxy(self, index: int) -> torch.Tensor:
        """Filter ``index``'s proxy, rebuilt (with its momentum buffer) if the filter's memory was replaced."""
        group, f = self._muon.param_groups[0], self._filters[index]
        proxy = group["params"][index]
        if _same_memory(proxy, f):
            return proxy
        new, layout = _filter_view(f)
        entry = self._muon.state.pop(proxy, None)
        if entry:
            buffer = _as_filter(entry["momentum_buffer"], self._layouts[index], f.shape)
            entry["momentum_buffer"] = _as_matrix(buffer, layout).to(f.device, f.dtype)
            self._muon.state[new] = entry
        group["params"][index], self._layouts[index] = new, layout
        return new

    def _follow_filters(self) -> None:
        for index in range(len(self._filters)):
            self._proxy(index)

    def _link_grad(self, index: int) -> None:
        """Makes filter ``index``'s proxy's ``.grad`` a view of the filter's (``None`` with it)."""
        f, proxy = self._filters[index], self._proxy(index)
        grad, layout = f.grad, self._layouts[index]
        if grad is not None and not _same_memory(_as_matrix(grad, layout), grad):
            # A gradient laid out unlike its filter (assigned by hand): copied into the filter's layout.
            f.grad = grad = torch.empty_strided(f.shape, f.stride(), dtype=grad.dtype, device=grad.device).copy_(grad)
        proxy.grad = None if grad is None else _as_matrix(grad, layout)


def _check_arguments(
    lr: Any,
    weight_decay: Any,
    momentum: Any,
    nesterov: Any,
    ns_steps: Any,
    adjust_lr_fn: Any,
    betas: Any,
    fused: Any,
) -> None:
    """``ConvMuon``'s checks of its arguments, one line each (``ArgumentError``)."""
    require(_is_number(lr) and lr >= 0, "lr", lr, "a number >= 0")
    require(_is_number(weight_decay) and weight_decay >= 0, "weight_decay", weight_decay, "a number >= 0")
    require(_is_number(momentum) and 0 <= momentum < 1, "momentum", momentum, "a number in [0, 1)")
    require(isinstance(nesterov, bool), "nesterov", nesterov, "true or false")
    ok_steps = isinstance(ns_steps, int) and not isinstance(ns_steps, bool) and 1 <= ns_steps < 100
    require(ok_steps, "ns_steps", ns_steps, "an integer in [1, 99] (torch.optim.Muon refuses 100 or more)")
    require(
        _muon_accepts(adjust_lr_fn),
        "adjust_lr_fn",
        adjust_lr_fn,
        "one torch.optim.Muon accepts, e.g. match_rms_adamw (Moonshot's) or original (Jordan's)",
    )
    ok_betas = isinstance(betas, Sequence) and len(betas) == 2 and all(_is_number(b) and 0 <= b < 1 for b in betas)
    require(ok_betas, "betas", betas, "two numbers in [0, 1), e.g. [0.9, 0.999]")
    require(isinstance(fused, bool), "fused", fused, "true or false")


def _is_number(value: Any) -> bool:
    return isinstance(value, numbers.Real) and not isinstance(value, bool)


def _muon_accepts(adjust_lr_fn: Any) -> bool:
    """Whether ``torch.optim.Muon`` accepts ``adjust_lr_fn`` (asked, not copied: its list grows)."""
    try:
        torch.optim.Muon([torch.zeros(1, 1)], adjust_lr_fn=adjust_lr_fn)
    except (ValueError, TypeError):
        return False
    return True


def _as_matrix(t: torch.Tensor, layout: tuple[int, ...]) -> torch.Tensor:
    """``(out, in, kh, kw)`` → ``(out, in·kh·kw)``, columns in ``layout``'s order of the dimensions (a view
    when ``t`` is laid out so in memory, else a copy)."""
    return t.permute(layout).reshape(t.shape[0], -1)


def _as_filter(matrix: torch.Tensor, layout: tuple[int, ...], shape: torch.Size) -> torch.Tensor:
    """The inverse of ``_as_matrix``: ``(out, in·kh·kw)`` → ``(out, in, kh, kw)`` of ``shape``."""
    inverse = [layout.index(dim) for dim in range(4)]
    return matrix.reshape([shape[dim] for dim in layout]).permute(inverse)


def _filter_view(f: torch.Tensor) -> tuple[torch.Tensor, tuple[int, ...]]:
    """The detached ``(out, in·kh·kw)`` view of filter ``f``'s memory and its layout: ``(0, 1, 2, 3)``
    contiguous, ``(0, 2, 3, 1)`` channels_last (ties between size-1 dimensions broken either way).

    Raises:
        ArgumentError: No such view exists (``out_channels`` are not outermost in memory).
    """
    layout = (0, *sorted((1, 2, 3), key=lambda dim: -f.stride(dim)))
    view = _as_matrix(f.detach(), layout)
    require(
        _same_memory(view, f),
        "params",
        f"a {tuple(f.shape)} filter with strides {f.stride()}",
        "4-D filters stored with out_channels outermost (contiguous or channels_last)",
    )
    return view, layout


def _same_memory(a: torch.Tensor, b: torch.Tensor) -> bool:
    """Whether ``a`` starts where ``b`` does, in the same storage (``a`` is a view of ``b`` there)."""
    return (
        a.device == b.device
        and a.data_ptr() == b.data_ptr()
        and a.untyped_storage().data_ptr() == b.untyped_storage().data_ptr()
    )


def _after_backward(optimizer: weakref.ref[ConvMuon], index: int, _filter: torch.Tensor) -> None:
    """A filter's gradient hook: links its proxy's ``.grad`` (a weak reference, so the hook keeps no
    optimizer alive; a model's deep copy does not copy hooks)."""
    alive = optimizer()
    if alive is not None:
        alive._link_grad(index)


def _remove_hooks(hooks: list[Any]) -> None:
    for hook in hooks:
        hook.remove()
