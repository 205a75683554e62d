"""The standard's exact signatures on the tracing namespaces (:mod:`agrad.autograd.tape.signatures`).

References: the standard's own stubs (array_api_stubs, in the array-api-tests checkout
beside the repository when it is there) and array_api_strict's functions, whose
signatures are the standard's; Python's own argument binding of the stubs' signatures.
"""

from __future__ import annotations

import importlib
import inspect
import sys
import xml.etree.ElementTree as ET
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from agrad.autograd.tape.signatures import (
    SIGNATURES,
    VERSIONS,
    parameters,
    standard_signature,
    with_signature,
)
from agrad.testing import load_backend

TRACING = {
    "numpy": "agrad.numpy",
    "array_api_strict": "agrad.array_api_strict",
    "dask": "agrad.dask",
    "cupy": "agrad.cupy",
}
STUBS = Path(__file__).resolve().parents[2] / "shared" / "array-api-tests" / "array-api" / "src"
FUNCTIONS = sorted(n for n in SIGNATURES if not n.startswith(("array.", "info.")))
METHODS = sorted(n for n in SIGNATURES if n.startswith("array."))


@pytest.fixture(params=sorted(TRACING))
def ns(request):
    base, reason = load_backend(request.param)
    if base is None:
        pytest.skip(reason)
    return importlib.import_module(TRACING[request.param])


def _lookup(ns, name):
    obj = ns
    for part in name.split("."):
        obj = getattr(obj, part)
    return obj


def _plain(sig: inspect.Signature) -> list[inspect.Parameter]:
    return [p.replace(annotation=p.empty) for p in sig.parameters.values()]


def _stub_signatures(version: str) -> dict[str, inspect.Signature]:
    """Every function's signature in the standard's stubs of ``version``, by our names."""
    import pkgutil

    sys.path.insert(0, str(STUBS))
    try:
        pkg = importlib.import_module(f"array_api_stubs._{version.replace('.', '_')}")
        out = {}
        for info in pkgutil.iter_modules(pkg.__path__):
            if info.name.startswith("_") or info.name in ("constants", "data_types"):
                continue
            mod = importlib.import_module(f"{pkg.__name__}.{info.name}")
            if info.name == "array_object":
                for n, f in inspect.getmembers(mod.array, inspect.isfunction):
                    if n != "__init__":
                        out[f"array.{n}"] = inspect.signature(f)
                continue
            prefix = {"linalg": "linalg.", "fft": "fft.", "info": "info."}.get(info.name, "")
            for n in mod.__all__:
                if n == "__eq__" or not inspect.isfunction(getattr(mod, n)):
                    continue
                key = n if n == "__array_namespace_info__" else prefix + n
                out[key] = inspect.signature(getattr(mod, n))
        return out
    finally:
        sys.path.remove(str(STUBS))


@pytest.mark.skipif(not STUBS.is_dir(), reason=f"the standard's stubs are not at {STUBS}")
@pytest.mark.parametrize("version", VERSIONS)
def test_table_is_the_standard_stubs(version):
    stubs = _stub_signatures(version)
    ours = {n for n in SIGNATURES if not (version == "2023.12" and n not in stubs)}
    assert set(stubs) == ours
    for name, sig in stubs.items():
        assert _plain(standard_signature(name, version)) == _plain(sig), name


def test_2024_12_accepts_every_2023_12_call():
    for name in SIGNATURES:
        try:
            old = _plain(standard_signature(name, "2023.12"))
        except KeyError:
            continue
        new = {p.name: p for p in _plain(standard_signature(name, "2024.12"))}
        for p in old:
            assert new[p.name] == p, name
        added = [p for p in new.values() if p not in old]
        assert all(p.kind is p.KEYWORD_ONLY and p.default is not p.empty for p in added), name


def test_unknown_names_and_versions():
    with pytest.raises(
        KeyError, match=r"'diff' is not a function of the Array API standard 2023.12"
    ):
        parameters("diff", "2023.12")
    with pytest.raises(ValueError, match=r"2022\.12"):
        parameters("sum", "2022.12")


def test_namespace_functions_have_the_signature(ns):
    wrong = []
    for name in FUNCTIONS:
        function = _lookup(ns, name)
        params = _plain(standard_signature(name))
        if _plain(inspect.signature(function)) != params:
            wrong.append(f"{name}{inspect.signature(function)}")
        # Python binds the arguments itself: the code object has the standard's parameters.
        code = getattr(function, "__code__", None)
        if code is not None:
            kinds = [p.kind for p in params]
            ok = (
                code.co_posonlyargcount == kinds.count(inspect.Parameter.POSITIONAL_ONLY)
                and code.co_kwonlyargcount == kinds.count(inspect.Parameter.KEYWORD_ONLY)
                and set(code.co_varnames[: len(params)]) == {p.name for p in params}
            )
            if not ok:
                wrong.append(f"{name}: code object {code.co_varnames}")
    assert not wrong


def test_traced_array_methods_have_the_signature(ns):
    wrong = []
    for name in METHODS:
        method = getattr(ns._Traced, name.split(".", 1)[1])
        if _plain(inspect.signature(method)) != _plain(standard_signature(name)):
            wrong.append(f"{name}{inspect.signature(method)}")
    assert not wrong


def _strict():
    return pytest.importorskip("array_api_strict")


def test_wrong_calls_raise_type_error_as_strict_does():
    """Calls that array_api_strict refuses with TypeError are refused on every tracing namespace."""
    strict = _strict()
    import agrad
    import agrad.array_api_strict as axp

    x = strict.asarray([[1.0, 2.0], [3.0, 4.0]])
    calls = [
        ("sum", (x,), {"axs": 0}),
        ("sum", (), {"x": x}),
        ("sum", (x, 0), {}),
        ("exp", (x,), {"out": x}),
        ("add", (x, x, x), {}),
        ("reshape", (x, (4,), None), {}),
        ("linalg.vector_norm", (x,), {"order": 2}),
        ("concat", ([x, x], 0), {}),
        ("eye", (2,), {"n_cols": 2}),
        ("clip", (x,), {"x": x}),
        ("fft.fft", (x,), {"dim": 0}),
    ]
    for name, args, kwargs in calls:
        with pytest.raises(TypeError):
            _lookup(strict, name)(*args, **kwargs)
        with pytest.raises(TypeError, match=name.rsplit(".", 1)[-1]):
            _lookup(axp, name)(*args, **kwargs)

        def inside(v, name=name, args=args, kwargs=kwargs):
            args = tuple(v if a is x else a for a in args)
            _lookup(axp, name)(*args, **kwargs)
            return axp.sum(v)

        with pytest.raises(TypeError, match=name.rsplit(".", 1)[-1]):
            agrad.grad(inside)(x)


def test_standard_calls_still_give_strict_results():
    strict = _strict()
    import agrad.array_api_strict as axp

    x = strict.asarray([[1.0, -2.0], [3.0, 4.0]])
    cases = [
        ("sum", (x,), {"axis": 0, "keepdims": True}),
        ("arange", (1, 7), {"step": 2}),
        ("eye", (2, 3), {"k": 1}),
        ("linspace", (0.0, 1.0), {"num": 5, "endpoint": False}),
        ("squeeze", (strict.reshape(x, (1, 4)),), {"axis": 0}),
        ("reshape", (x,), {"shape": (4,)}),
        ("clip", (x,), {"max": 2.0}),
        ("concat", ([x, x],), {"axis": 1}),
        ("meshgrid", (x[0, :], x[1, :]), {"indexing": "ij"}),
        ("linalg.vector_norm", (x,), {"ord": 1, "axis": 1}),
        ("fft.fftfreq", (4,), {"d": 0.5}),
    ]
    for name, args, kwargs in cases:
        want = _lookup(strict, name)(*args, **kwargs)
        got = _lookup(axp, name)(*args, **kwargs)
        for w, g in zip(want, got) if isinstance(want, (list, tuple)) else [(want, got)]:
            assert g.dtype == w.dtype and g.shape == w.shape, name
            assert bool(strict.all(g == w)), name


@settings(max_examples=25, deadline=None)
@given(name=st.sampled_from(sorted(SIGNATURES)), data=st.data())
def test_wrapper_passes_on_exactly_what_was_given(name, data):
    """Python's binding of the stub's signature decides; given keywords are passed on, defaults not."""
    sig = standard_signature(name)
    seen = []
    wrapper = with_signature(lambda *a, **k: seen.append((a, k)) or "done", name)
    args, kwargs = [], {}
    for p in sig.parameters.values():
        token = f"<{p.name}>"
        if p.kind is p.VAR_POSITIONAL:
            args += [token] * data.draw(st.integers(0, 2))
        elif p.default is p.empty and p.kind is not p.KEYWORD_ONLY:
            if p.kind is p.POSITIONAL_OR_KEYWORD and data.draw(st.booleans()):
                kwargs[p.name] = token
            elif not kwargs:
                args.append(token)
            else:
                kwargs[p.name] = token
        elif p.kind is not p.VAR_KEYWORD and data.draw(st.booleans()):
            kwargs[p.name] = token
    if data.draw(st.booleans()):
        kwargs["not_a_parameter"] = 1
    try:
        bound = sig.bind(*args, **kwargs)
    except TypeError:
        with pytest.raises(TypeError):
            wrapper(*args, **kwargs)
        assert not seen
        return
    assert wrapper(*args, **kwargs) == "done"
    given_ = bound.arguments
    params = list(sig.parameters.values())
    positional = [p for p in params if p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD)]
    required = [given_[p.name] for p in positional if p.default is p.empty]
    optional = [p for p in positional if p.default is not p.empty]
    last = max((i for i, p in enumerate(optional) if p.name in given_), default=-1)
    passed = [given_.get(p.name, p.default) for p in optional[: last + 1]]
    star = [given_.get(p.name, ()) for p in params if p.kind is p.VAR_POSITIONAL]
    keywords = {
        p.name: given_[p.name] for p in params if p.kind is p.KEYWORD_ONLY and p.name in given_
    }
    assert seen == [((*required, *passed, *(star[0] if star else ())), keywords)]


def test_suite_report_parsing(tmp_path):
    from agrad.testing.array_api_suite import Run, compare, outcomes

    def junit(path, cases):
        suite = ET.Element("testsuite")
        for name, tag in cases:
            case = ET.SubElement(suite, "testcase", classname="array_api_tests.test_a", name=name)
            if tag:
                ET.SubElement(case, tag)
        ET.ElementTree(ET.Element("testsuites")).getroot().append(suite)
        root = ET.Element("testsuites")
        root.append(suite)
        ET.ElementTree(root).write(path)
        return outcomes(path)

    ref = junit(tmp_path / "r.xml", [("t[1]", None), ("t[2]", None), ("t[3]", "failure")])
    ours = junit(tmp_path / "o.xml", [("t[1]", None), ("t[2]", "skipped"), ("t[2]", "error")])
    assert ref["array_api_tests/test_a.py::t[3]"] == "failed"
    assert ours["array_api_tests/test_a.py::t[2]"] == "failed"  # the worst of two reports
    lost = compare(Run("reference", ref, 0.0, 0), Run("passthrough", ours, 0.0, 1))
    assert lost == ["array_api_tests/test_a.py::t[2]"]


def test_traced_array_dlpack_takes_the_standard_keywords():
    np = pytest.importorskip("numpy")
    import agrad
    import agrad.numpy as anp

    seen = {}

    def f(v):
        capsule_owner = v * 2.0
        seen["dlpack"] = np.from_dlpack(capsule_owner)  # calls __dlpack__(max_version=...)
        with pytest.raises(TypeError, match="__dlpack__"):
            capsule_owner.__dlpack__(stream=None, version=1)
        return anp.sum(v)

    agrad.grad(f)(np.arange(3.0))
    np.testing.assert_array_equal(seen["dlpack"], [0.0, 2.0, 4.0])


def test_traced_strict_boxes_floating_arrays_as_leaves_while_its_trace_is_open():
    """The suite's traced mode: leaves from creation functions, nodes recorded, tape emptied."""
    _strict()
    import agrad.testing.traced_strict as txp
    from agrad.autograd.tape.traced import CONSTANT, TracedArray, current_trace

    assert txp.run_trace() is None
    assert not isinstance(txp.asarray([1.0]), TracedArray)  # no trace: the namespace's own
    txp.pytest_configure(None)
    try:
        trace = txp.run_trace()
        assert current_trace() is trace
        x = txp.linspace(0.0, 1.0, 3)
        n = txp.arange(3)
        assert isinstance(x, TracedArray) and x._node is not CONSTANT and x._trace is trace
        assert n.dtype == txp.int64 and not (isinstance(n, TracedArray) and n._node is not CONSTANT)
        y = txp.sum(txp.sin(x) * x)
        assert isinstance(y, TracedArray) and len(trace.tape) == 3
        assert inspect.signature(txp.linspace) == standard_signature("linspace")
        assert inspect.signature(txp.fft.fftfreq) == standard_signature("fft.fftfreq")
        txp.pytest_runtest_teardown(None)
        assert trace.tape == []
    finally:
        txp.pytest_unconfigure(None)
    assert txp.run_trace() is None and current_trace() is None
