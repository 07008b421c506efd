"""Backward ports whose convolutions are the zoo's fast ones (test helper).

``examples/numpy_backward.py`` with its forward convolutions and its input gradients
(the transposed convolutions, run as a convolution of ``c_bar`` with the kernel flipped
in space and its channel axes swapped) computed by a convolution of
``conformance/mistakes/zoo.py``; the kernel gradients stay direct sums. Each attribute
``backward_<conv>`` is a port for ``resblock check --api backward``.
"""

import importlib.util
from pathlib import Path

import numpy as np

from resblock.conformance.mistakes import zoo

EXAMPLE = Path(__file__).resolve().parents[3] / "examples" / "numpy_backward.py"
F32 = np.float32


def _port(conv_name: str):
    spec = importlib.util.spec_from_file_location(f"numpy_backward_{conv_name}", EXAMPLE)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)  # a module of its own: patching it touches no other
    conv = zoo.CONVS[conv_name]
    direct_backward = mod.conv3x3_backward

    def conv3x3(x, kernel, bias):
        return conv(np.asarray(x, F32), np.asarray(kernel, F32), np.asarray(bias, F32))

    def conv3x3_backward(x, kernel, c_bar):
        _, k_bar, bias_bar = direct_backward(x, kernel, c_bar)
        flipped = np.ascontiguousarray(kernel[::-1, ::-1].transpose(0, 1, 3, 2))
        x_bar = conv(np.asarray(c_bar, F32), flipped, np.zeros(flipped.shape[-1], F32))
        return x_bar, k_bar, bias_bar

    mod.conv3x3, mod.conv3x3_backward = conv3x3, conv3x3_backward
    return mod.backward


backward_fft = _port("fft")
backward_winograd2 = _port("winograd2")
backward_winograd4 = _port("winograd4")
