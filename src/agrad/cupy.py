"""agrad's tracing namespace over ``cupy``: the Array API standard, differentiable.

``array_namespace(x)`` returns this module for a traced array whose base is cupy. With
no active trace every function is a plain pass-through of the base namespace.
"""

from agrad.autograd.tape.tracing_namespace import populate

populate(globals(), "cupy")
del populate
