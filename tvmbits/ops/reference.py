"""The obviously-correct integer reference every kernel is tested against (plain int64 numpy).

Inputs are *values* (`Encoding.decode` of the codes), never packed codes.
"""

import numpy as np


def conv2d_nhwc(
    a_values: np.ndarray,
    w_values: np.ndarray,
    strides: tuple[int, int],
    padding: tuple[int, int, int, int],
) -> np.ndarray:
    """Zero-padded conv2d (cross-correlation, no dilation) in int64.

    Parameters
    ----------
    a_values : np.ndarray
        Activations `[N, H, W, C]`.
    w_values : np.ndarray
        Weights `[O, KH, KW, C]` (OHWI).
    strides : (int, int)
        (sh, sw).
    padding : (int, int, int, int)
        (top, left, bottom, right); padded pixels are 0.

    Returns
    -------
    np.ndarray
        int64 `[N, OH, OW, O]`, OH = (H + top + bottom − KH) // sh + 1, likewise OW.
    """
    a = np.asarray(a_values, np.int64)
    w = np.asarray(w_values, np.int64)
    top, left, bottom, right = padding
    sh, sw = strides
    a = np.pad(a, ((0, 0), (top, bottom), (left, right), (0, 0)))
    _, height, width, _ = a.shape
    out_channels, kernel_h, kernel_w, _ = w.shape
    out_h = (height - kernel_h) // sh + 1
    out_w = (width - kernel_w) // sw + 1
    out = np.zeros((a.shape[0], out_h, out_w, out_channels), np.int64)
    for y in range(out_h):
        for x in range(out_w):
            patch = a[:, y * sh : y * sh + kernel_h, x * sw : x * sw + kernel_w, :]
            out[:, y, x, :] = np.einsum("nhwc,ohwc->no", patch, w)
    return out


def dense(a_values: np.ndarray, w_values: np.ndarray) -> np.ndarray:
    """int64 `[N, O]` = a_values `[N, K]` · w_values `[O, K]`ᵀ."""
    return np.asarray(a_values, np.int64) @ np.asarray(w_values, np.int64).T
