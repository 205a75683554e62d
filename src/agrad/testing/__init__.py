"""Test helpers for agrad and for libraries built on it.

- :func:`available_backends` / :func:`load_backend`: the installed array namespaces,
  each with a reason when it cannot run here (e.g. CuPy without a CUDA GPU).
- :func:`to_numpy`: any supported array as a NumPy array (for comparisons only).
- :func:`check_grads`: reverse-mode derivatives (up to any order) against central
  finite differences in random directions.
- :func:`assert_close` / :func:`assert_same_kind`: namespace, dtype, device and shape
  before values, with a dtype-aware default tolerance.
- :mod:`agrad.testing.plugin`: the pytest plugin (registered by agrad's ``pytest11``
  entry point): an ``xp`` fixture over the installed backends, ``skip_backend`` and
  ``xfail_backend`` markers, ``--agrad-backends``.
"""

from agrad.testing._check_grads import check_grads, default_fd_settings
from agrad.testing._compare import (
    BACKENDS,
    assert_close,
    assert_same_kind,
    available_backends,
    default_tolerance,
    load_backend,
    to_numpy,
)

__all__ = [
    "BACKENDS",
    "assert_close",
    "assert_same_kind",
    "available_backends",
    "check_grads",
    "default_fd_settings",
    "default_tolerance",
    "load_backend",
    "to_numpy",
]
