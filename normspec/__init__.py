"""normspec: the specification of Batch Normalization and Batch Renormalization, made executable.

Subpackages: :mod:`normspec.spec` (the normative text and its clauses),
:mod:`normspec.reference` (the float64 NumPy reference), :mod:`normspec.adapters`
(the protocol implementations are driven through) and :mod:`normspec.conformance`
(the Hypothesis-driven checks).
"""

from importlib.metadata import PackageNotFoundError, version

try:
    __version__ = version("normspec")
except PackageNotFoundError:  # pragma: no cover - running from a source tree
    __version__ = "0+unknown"

__all__ = ["__version__"]
