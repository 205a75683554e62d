"""Optimizer steps compiled per backend: record once, run as a multi-tensor program.

:mod:`~agrad.optim.program.ir` defines the program, :mod:`~agrad.optim.program.recorder`
records it from any update rule, :mod:`~agrad.optim.program.dispatch` picks and runs
an executor (torch, NumPy) for ``step(..., inplace=True)``.
"""
