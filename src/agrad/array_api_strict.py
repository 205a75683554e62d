"""agrad's tracing namespace over ``array_api_strict``: the Array API standard, differentiable.

``array_namespace(x)`` returns this module for a traced array whose base is array_api_strict. With
no active trace every function is a plain pass-through of the base namespace.
"""

from agrad.autograd.tape.tracing_namespace import populate

populate(globals(), "array_api_strict")
del populate
