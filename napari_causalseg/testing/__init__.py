"""For tests and benchmarks: the straightforward reference model the fast one must equal.

Shipped in the package so the test suite and ``benchmarks/`` import it the same way,
without editing ``sys.path``. Not used at run time.
"""
