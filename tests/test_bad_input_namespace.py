"""Bad input to ``agrad.array_namespace``: arrays of two libraries, or no array at all."""

import numpy as np
import pytest

import agrad


def test_mixed_frameworks_name_both():
    torch = pytest.importorskip("torch")
    with pytest.raises(TypeError, match=r"numpy \(argument 0\) and torch \(argument 1\)"):
        agrad.array_namespace(np.ones(2), torch.ones(2))


def test_not_an_array():
    with pytest.raises(TypeError, match="argument 0 of type str"):
        agrad.array_namespace("hello")
    with pytest.raises(TypeError, match="none of the inputs is an array"):
        agrad.array_namespace(1.0, None)
