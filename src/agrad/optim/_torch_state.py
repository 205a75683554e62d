"""``TorchOptimizer`` state dicts in ``torch.optim``'s exact format, for every optimizer both have.

:class:`~agrad.optim.TorchOptimizer` keeps, per parameter, the agrad state's slice under
torch's names (``exp_avg``, ``step``...). A few entries differ from what the
``torch.optim`` optimizer of the same name keeps, and a group holds agrad's options,
not torch's. :func:`state_to_torch` and :func:`group_to_torch` turn the wrapper's
``state_dict()`` into exactly torch's (same keys, tensor vs number, ``step``'s dtype,
torch's group options with torch's defaults), so that ``torch.optim.X.load_state_dict``
accepts it and continues equally; :func:`state_from_torch` reads torch's back.

What differs, and how it is mapped:

- ``SGD`` and ``Muon`` keep no ``step``: dropped on the way out; on the way in a
  missing count is 1 where the parameter has other state (a buffer means a step was
  taken), 0 otherwise.
- ``Adafactor`` keeps ``row_var``/``col_var`` for a matrix and ``variance`` for a
  vector; agrad's state holds all three (0-d placeholders): the placeholders are dropped,
  and filled again from ``opt.init`` on the way in.
- ``LBFGS`` keeps its history as lists, ``H_diag`` as a 0-d tensor, a scratch list
  ``al`` and ``max_eval`` resolved to ``max_iter * 5 // 4``; agrad's state holds tuples
  and a Python number.
- Scalar state torch keeps as a tensor of its scalar dtype (``step``, NAdam's
  ``mu_product``) is written as one.
- Group options: torch's own (``foreach``, ``fused``, ``capturable``,
  ``differentiable``, AdamW's ``decoupled_weight_decay``) are added with the values
  torch would give them; agrad's extra options (``mask``, Muon's ``ns_dtype``) are
  left out when they hold their default (``None``), kept otherwise (torch ignores
  them). Option names are torch's for every optimizer both have.
"""

from __future__ import annotations

import functools
from typing import Any

import torch

__all__ = ["TORCH_CLASS", "group_to_torch", "state_from_torch", "state_to_torch", "torch_class"]

# agrad constructor name -> torch.optim class name, for every optimizer both have
TORCH_CLASS = {
    "adam": "Adam",
    "adamw": "AdamW",
    "sgd": "SGD",
    "nadam": "NAdam",
    "radam": "RAdam",
    "rmsprop": "RMSprop",
    "adagrad": "Adagrad",
    "adadelta": "Adadelta",
    "adamax": "Adamax",
    "rprop": "Rprop",
    "asgd": "ASGD",
    "adafactor_torch": "Adafactor",
    "muon": "Muon",
    "lbfgs": "LBFGS",
}
_NO_STEP = frozenset({"sgd", "muon"})  # torch keeps no step count for these
_SCALARS = frozenset({"step", "mu_product"})  # torch: 0-d tensors of its scalar dtype
_AGRAD_ONLY_DEFAULTS = {"mask": None, "ns_dtype": None}


def torch_class(name: str | None) -> type | None:
    """The ``torch.optim`` class of the agrad constructor called ``name``, or ``None``."""
    cls_name = TORCH_CLASS.get(name or "")
    return getattr(torch.optim, cls_name, None) if cls_name else None


@functools.cache
def _torch_group_defaults(name: str) -> dict[str, Any]:
    """The options torch's optimizer puts in a group by default (one built on a dummy)."""
    cls = torch_class(name)
    if cls is None:
        return {}
    dummy = torch.nn.Parameter(torch.zeros(2, 2))
    group = cls([dummy]).param_groups[0]
    return {k: v for k, v in group.items() if k != "params"}


def _scalar_dtype() -> torch.dtype:
    return torch.float64 if torch.get_default_dtype() == torch.float64 else torch.float32


def group_to_torch(name: str | None, group: dict[str, Any]) -> dict[str, Any]:
    """``group`` (a ``state_dict`` param group) with torch's options for optimizer ``name``."""
    defaults = _torch_group_defaults(name) if name else {}
    if not defaults:
        return group
    out = {
        k: v
        for k, v in group.items()
        if not (k in _AGRAD_ONLY_DEFAULTS and k not in defaults and v is None)
    }
    for k, v in defaults.items():
        out.setdefault(k, v)
    if name == "lbfgs" and out.get("max_eval") is None:  # torch resolves it when built
        out["max_eval"] = out["max_iter"] * 5 // 4
    return out


def state_to_torch(name: str | None, entries: dict[str, Any], param: Any) -> dict[str, Any]:
    """One parameter's state as torch's optimizer ``name`` keeps it (see the module)."""
    if name not in TORCH_CLASS:
        return entries
    out = dict(entries)
    if name in _NO_STEP:
        out.pop("step", None)
    if name == "adafactor_torch":
        for k in ("variance",) if param.ndim >= 2 else ("row_var", "col_var"):
            out.pop(k, None)
    for k in _SCALARS & out.keys():
        v = out[k]
        if not (isinstance(v, torch.Tensor) and v.ndim == 0 and v.dtype == _scalar_dtype()):
            out[k] = torch.tensor(float(v), dtype=_scalar_dtype())
    if name == "lbfgs" and "d" in out:
        for k in ("old_dirs", "old_stps", "ro"):
            if isinstance(out.get(k), tuple):
                out[k] = list(out[k])
        h = out.get("H_diag")
        if isinstance(h, (int, float)) and not isinstance(h, bool):
            out["H_diag"] = torch.tensor(float(h), dtype=param.dtype, device=param.device)
        out.setdefault("al", [None] * len(out.get("old_dirs", ())))
    return out


def state_from_torch(name: str | None, entries: dict[str, Any]) -> dict[str, Any]:
    """One parameter's state from torch's format as the wrapper keeps it (see the module)."""
    if name != "lbfgs":
        return entries  # missing entries are filled at the next step
    out = {k: v for k, v in entries.items() if k != "al"}
    for k in ("old_dirs", "old_stps", "ro"):
        if isinstance(out.get(k), list):
            out[k] = tuple(out[k])
    return out
