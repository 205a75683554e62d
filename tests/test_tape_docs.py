"""The differentiability page is generated from the rule tables and kept up to date."""

from __future__ import annotations

from pathlib import Path

from agrad.autograd.tape import _doc, standard

ROOT = Path(__file__).resolve().parents[1]


def test_committed_page_is_up_to_date():
    committed = (ROOT / _doc.PAGE).read_text()
    msg = "docs/differentiability.md is stale: run `python -m agrad.autograd.tape._doc`"
    assert committed == _doc.differentiability_page(), msg


def test_every_standard_function_has_a_status_other_than_unsupported():
    keys = list(standard.FUNCTIONS)
    keys += [f"linalg.{n}" for n in standard.LINALG_FUNCTIONS]
    keys += [f"fft.{n}" for n in standard.FFT_FUNCTIONS]
    assert [k for k in keys if _doc.status(k)[0] == "not differentiable"] == []
