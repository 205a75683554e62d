"""State dicts cross between torch.optim and agrad.optim.TorchOptimizer, for every optimizer both have.

For each optimizer (and the options that change its state: amsgrad, nesterov,
decoupled weight decay, centered RMSprop...), in float64:

- torch -> agrad: ``K`` steps of ``torch.optim.X``, its state dict (through
  ``torch.save``/``torch.load(weights_only=True)``) loaded into the wrapper, ``N`` more
  steps: the same weights as torch.optim continuing (1e-10 relative);
- agrad -> torch: ``K`` steps of the wrapper, its state dict loaded into a fresh
  ``torch.optim.X`` (which must accept it), ``N`` more steps: the same weights as the
  wrapper continuing, and the state dict has torch's exact format (state keys, tensor
  or number, dtypes, group option names) compared with ``torch.optim.X``'s own.
"""

from __future__ import annotations

import io

import pytest

torch = pytest.importorskip("torch")

import agrad.optim  # noqa: E402
from agrad.optim import TorchOptimizer  # noqa: E402

CASES = {
    "adam": ("Adam", "adam", dict(lr=1e-2, weight_decay=1e-2)),
    "adam-amsgrad": ("Adam", "adam", dict(lr=1e-2, amsgrad=True)),
    "adamw": ("AdamW", "adamw", dict(lr=1e-2, weight_decay=0.1)),
    "sgd-momentum": ("SGD", "sgd", dict(lr=1e-2, momentum=0.9, dampening=0.1)),
    "sgd-nesterov": ("SGD", "sgd", dict(lr=1e-2, momentum=0.9, nesterov=True, weight_decay=1e-2)),
    "nadam": ("NAdam", "nadam", dict(lr=1e-2, weight_decay=1e-2)),
    "nadam-decoupled": (
        "NAdam",
        "nadam",
        dict(lr=1e-2, weight_decay=0.1, decoupled_weight_decay=True),
    ),
    "radam": ("RAdam", "radam", dict(lr=1e-2, weight_decay=1e-2)),
    "radam-decoupled": (
        "RAdam",
        "radam",
        dict(lr=1e-2, weight_decay=0.1, decoupled_weight_decay=True),
    ),
    "rmsprop-centered-momentum": (
        "RMSprop",
        "rmsprop",
        dict(lr=1e-3, alpha=0.9, centered=True, momentum=0.5, weight_decay=1e-2),
    ),
    "adagrad": ("Adagrad", "adagrad", dict(lr=1e-2, lr_decay=1e-2, initial_accumulator_value=0.1)),
    "adadelta": ("Adadelta", "adadelta", dict(lr=1.0, rho=0.8, weight_decay=1e-2)),
    "adamax": ("Adamax", "adamax", dict(lr=1e-2, weight_decay=1e-2)),
    "rprop": ("Rprop", "rprop", dict(lr=1e-3, etas=(0.4, 1.3), step_sizes=(1e-5, 1.0))),
    "asgd": ("ASGD", "asgd", dict(lr=1e-2, lambd=1e-3, t0=3.0, weight_decay=1e-2)),
    "adafactor": ("Adafactor", "adafactor_torch", dict(lr=1e-2, weight_decay=1e-2)),
    "muon": ("Muon", "muon", dict(lr=1e-2, weight_decay=0.05, adjust_lr_fn="match_rms_adamw")),
    "lbfgs": ("LBFGS", "lbfgs", dict(lr=0.5, max_iter=4, history_size=3)),
    "lbfgs-wolfe": (
        "LBFGS",
        "lbfgs",
        dict(lr=1.0, max_iter=4, history_size=3, line_search_fn="strong_wolfe"),
    ),
}
K, N = 6, 6


@pytest.fixture(autouse=True)
def _float64_one_thread():
    """float64 by default (torch keeps scalar state such as ``step`` in the default
    dtype) and one thread (tiny tensors on a shared CPU)."""
    dtype, threads = torch.get_default_dtype(), torch.get_num_threads()
    torch.set_default_dtype(torch.float64)
    torch.set_num_threads(1)
    yield
    torch.set_default_dtype(dtype)
    torch.set_num_threads(threads)


def _model(muon):
    torch.manual_seed(0)
    return torch.nn.Sequential(
        torch.nn.Linear(5, 6, bias=not muon), torch.nn.Tanh(), torch.nn.Linear(6, 2, bias=not muon)
    )


def _data():
    g = torch.Generator().manual_seed(1)
    return (
        torch.randn(12, 5, generator=g, dtype=torch.float64),
        torch.randn(12, 2, generator=g, dtype=torch.float64),
    )


def _steps(model, opt, n):
    x, y = _data()
    for _ in range(n):

        def closure():
            opt.zero_grad()
            loss = torch.mean((model(x) - y) ** 2)
            loss.backward()
            return loss

        opt.step(closure)


def _roundtrip(obj):
    buf = io.BytesIO()
    torch.save(obj, buf)
    buf.seek(0)
    return torch.load(buf, weights_only=True)


def _weights(model):
    return torch.cat([p.detach().flatten() for p in model.parameters()])


def _form(sd):
    """What ``torch.optim.X.load_state_dict`` sees: state keys, value types, tensor dtypes
    and shapes, group option names."""

    def leaf(v):
        if isinstance(v, torch.Tensor):
            return ("tensor", v.dtype, tuple(v.shape))
        if isinstance(v, list):
            return ("list", len(v))
        return (type(v).__name__,)

    state = {i: {k: leaf(v) for k, v in s.items()} for i, s in sd["state"].items()}
    return state, [sorted(g) for g in sd["param_groups"]]


@pytest.fixture
def case(request):
    cls_name, factory, kw = CASES[request.param]
    cls = getattr(torch.optim, cls_name)
    if factory == "muon":
        from test_optim_torch_more import _muon_in_float64  # torch's Muon without bfloat16

        with _muon_in_float64():
            yield cls, getattr(agrad.optim, factory), kw, True
    else:
        yield cls, getattr(agrad.optim, factory), kw, False


@pytest.mark.parametrize("case", list(CASES), indirect=True)
def test_torch_state_dict_into_the_wrapper_and_back(case):
    cls, factory, kw, muon = case
    ref = _model(muon)
    torch_opt = cls(ref.parameters(), **kw)
    _steps(ref, torch_opt, K)

    # torch -> agrad: the wrapper continues from torch.optim's state as torch.optim does
    model = _model(muon)
    model.load_state_dict(ref.state_dict())
    wrapper = TorchOptimizer(model.parameters(), factory, **kw)
    wrapper.load_state_dict(_roundtrip(torch_opt.state_dict()))
    torch_sd_at_k = _roundtrip(torch_opt.state_dict())
    _steps(ref, torch_opt, N)
    _steps(model, wrapper, N)
    torch.testing.assert_close(_weights(model), _weights(ref), rtol=1e-10, atol=1e-12)

    # agrad -> torch: K steps of the wrapper from scratch, then torch.optim continues
    model = _model(muon)
    wrapper = TorchOptimizer(model.parameters(), factory, **kw)
    _steps(model, wrapper, K)
    sd = _roundtrip(wrapper.state_dict())
    assert _form(sd) == _form(torch_sd_at_k)  # torch's exact format
    other = _model(muon)
    other.load_state_dict(model.state_dict())
    torch_opt = cls(other.parameters(), **kw)
    torch_opt.load_state_dict(sd)
    _steps(other, torch_opt, N)
    _steps(model, wrapper, N)
    torch.testing.assert_close(_weights(other), _weights(model), rtol=1e-10, atol=1e-12)
    assert not torch.equal(_weights(model), _weights(_model(muon)))  # it trained


def test_float32_default_keeps_torchs_scalar_dtype():
    """With float32 as torch's default, torch keeps ``step`` and NAdam's ``mu_product`` as
    float32 tensors even for float64 parameters; so does the wrapper's state dict."""
    torch.set_default_dtype(torch.float32)
    for cls, factory in (
        (torch.optim.NAdam, agrad.optim.nadam),
        (torch.optim.Adam, agrad.optim.adam),
    ):
        ref, model = _model(False).double(), _model(False).double()
        torch_opt = cls(ref.parameters(), lr=1e-2)
        wrapper = TorchOptimizer(model.parameters(), factory, lr=1e-2)
        _steps(ref, torch_opt, 2)
        _steps(model, wrapper, 2)
        assert _form(wrapper.state_dict()) == _form(torch_opt.state_dict())
        cls(model.parameters(), lr=1e-2).load_state_dict(_roundtrip(wrapper.state_dict()))
