"""stmodels: spatio-temporal (video) prediction for PyTorch.

Fast selective-scan and AdaLN kernels (:mod:`stmodels.ops`), composable blocks and DIFFUMA.
Importing the package never fails because the compiled extension is missing: see
:mod:`stmodels._ext` and ``python -m stmodels.info``.
"""

__version__ = "0.1.0"

from stmodels import ops  # noqa: E402

__all__ = ["ops", "__version__"]
