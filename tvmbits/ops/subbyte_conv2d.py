"""Sub-byte NHWC conv2d as byte dot products (TE compute `subbyte_conv2d`).

data   `[N, H, W, CP]` uint8, `subbyte_pack` of NHWC activations (biased values);
weight `[ceil(O/16), KH, KW, CP/4, 16, 4]` int8/uint8, `block_weight` of OHWI weight values;
output `[N, OH, OW, O]` int32, exactly Σ value_a · value_w over the taps inside the input.
The input is padded with the bias (`subbyte_pad`: value 0), so padded taps contribute 0, also
for bipolar activations (a padded pixel is value 0, not −1), and the reduction has no test
in it; the sum of biased values is corrected by `weight_offset` after the reduction.
"""

from tvm import te, tirx

from tvmbits.ops.encoding import Encoding
from tvmbits.ops.subbyte import (DATA_MAX, DOT, WEIGHT_MAX, bias, check_packed, data_max, weight_max,
                                 weight_offset_te)
from tvmbits.ops.window import Window


def subbyte_conv2d_nhwc(
    data: te.Tensor,
    weight: te.Tensor,
    in_channels: int,
    out_channels: int,
    act: Encoding,
    wgt: Encoding,
    strides: tuple[int, int],
    padding: tuple[int, int, int, int],
    offset: te.Tensor | None = None,
) -> te.Tensor:
    """Exact integer conv2d of sub-byte operands (layouts in the module docstring).

    Parameters
    ----------
    data, weight : te.Tensor
        Biased activations and blocked weight bytes.
    in_channels, out_channels : int
        C and O, before padding.
    act, wgt : Encoding
        Encodings of the activation and weight values.
    strides : (int, int)
        (sh, sw).
    padding : (int, int, int, int)
        (top, left, bottom, right) zero padding.
    offset : te.Tensor, optional
        int32 `[O]`, `weight_offset` of the weights (the compiler passes it as a constant);
        computed here from the weights when None. Unused for unsigned activations (bias 0).

    Returns
    -------
    te.Tensor
        int32 `[N, OH, OW, O]`.
    """
    batch, height, width, _ = (int(d) for d in data.shape)
    _, kernel_h, kernel_w, _, lanes, _ = (int(d) for d in weight.shape)
    check_packed(data, weight, int(in_channels), wgt)
    window = Window.of((height, width), (kernel_h, kernel_w), strides, padding)
    padded = _pad(data, window, bias(act))
    ky = te.reduce_axis((0, kernel_h), "ky")
    kx = te.reduce_axis((0, kernel_w), "kx")
    c = te.reduce_axis((0, int(data.shape[-1])), "c")
    (sh, sw) = window.strides

    def output(n, y, x, o):
        a = padded[n, y * sh + ky, x * sw + kx, c].astype("int32")
        w = weight[o // lanes, ky, kx, c // DOT, o % lanes, c % DOT].astype("int32")
        return te.sum(a * w, axis=[ky, kx, c])

    out = te.compute((batch, *window.out_size, int(out_channels)), output, name="subbyte_conv2d",
                     attrs={DATA_MAX: data_max(act), WEIGHT_MAX: weight_max(wgt)})
    if not bias(act):
        return out
    if offset is None:
        offset = weight_offset_te(weight, act, int(out_channels))
    return te.compute(out.shape, lambda n, y, x, o: out[n, y, x, o] - offset[o], name="subbyte_unbias")


def _pad(data: te.Tensor, window: Window, value: int) -> te.Tensor:
    """`data` with the window's padding filled with `value` (TE compute `subbyte_pad`)."""
    top, left, bottom, right = window.padding
    if not any(window.padding):
        return data
    batch, height, width, channels = (int(d) for d in data.shape)

    def pixel(n, h, w, c):
        inside = tirx.all(h >= top, h < top + height, w >= left, w < left + width)
        return tirx.if_then_else(inside, data[n, h - top, w - left, c], tirx.const(value, "uint8"))

    shape = (batch, height + top + bottom, width + left + right, channels)
    return te.compute(shape, pixel, name="subbyte_pad")
