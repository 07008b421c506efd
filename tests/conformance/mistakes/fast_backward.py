"""Backward ports whose convolutions are the zoo's fast ones (test helper).

``examples/numpy_backward.py`` with its forward convolutions and its input gradients
(the transposed convolutions, run as a convolution of ``c_bar`` with the kernel flipped
in space and its channel axes swapped) computed by a convolution of
``conformance/mistakes/zoo.py``; the kernel gradients stay direct sums. Each attribute
``backward_<conv>`` is a port for ``resblock check --api backward``;
``backward_fft_kernel_grad`` keeps direct convolutions and computes the kernel gradients
as FFT correlations instead.
"""

import importlib.util
from pathlib import Path

import numpy as np

from resblock.conformance.mistakes import zoo

EXAMPLE = Path(__file__).resolve().parents[3] / "examples" / "numpy_backward.py"
F32 = np.float32


def _example(name: str):
    spec = importlib.util.spec_from_file_location(f"numpy_backward_{name}", EXAMPLE)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)  # a module of its own: patching it touches no other
    return mod


def _port(conv_name: str):
    mod = _example(conv_name)
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


def kernel_grad_fft(a, c_bar):
    """``k_bar`` of ``conv3x3(a, k)`` as FFT correlations over the padded plane: batch
    and positions summed in the frequency domain, float32 (complex64)."""
    import scipy.fft

    n, h, w, c = a.shape
    size = (h + 2, w + 2)
    spec_a = scipy.fft.rfft2(np.pad(a, ((0, 0), (1, 1), (1, 1), (0, 0))), s=size, axes=(1, 2))
    spec_b = scipy.fft.rfft2(c_bar, s=size, axes=(1, 2))
    cross = np.einsum("nhwc,nhwf->hwcf", spec_a, np.conj(spec_b)).astype(np.complex64)
    corr = scipy.fft.irfft2(cross, s=size, axes=(0, 1))
    return np.ascontiguousarray(corr[0:3, 0:3]).astype(F32)


def _fft_kernel_grad_port():
    mod = _example("fft_kernel_grad")
    direct_backward = mod.conv3x3_backward

    def conv3x3_backward(x, kernel, c_bar):
        x_bar, _, bias_bar = direct_backward(x, kernel, c_bar)
        return x_bar, kernel_grad_fft(np.asarray(x, F32), np.asarray(c_bar, F32)), bias_bar

    mod.conv3x3_backward = conv3x3_backward
    return mod.backward


backward_fft_kernel_grad = _fft_kernel_grad_port()
