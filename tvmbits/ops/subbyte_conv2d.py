"""Sub-byte NHWC conv2d: codes unpacked to int32 values in registers (TE compute `subbyte_conv2d`).

data   `[N, H, W, CB]` uint8, `subbyte_pack` of NHWC activation codes;
weight `[O, KH, KW, CB]` uint8, `pack_subbyte` of OHWI weight codes;
output `[N, OH, OW, O]` int32, exactly Σ value_a · value_w over the taps inside the input.
Padded taps contribute 0, also for bipolar activations (a padded pixel is value 0, not −1).
Both operands are unpacked to int16 values once per call (`subbyte_unpack`,
`subbyte_unpack_weight`) before the multiply-accumulate loop.
"""

from tvm import te, tirx

from tvmbits.ops.encoding import Encoding
from tvmbits.ops.subbyte import check_packed, value_at
from tvmbits.ops.window import Window

UNPACKED = "int16"  # holds every value of a ≤ 8-bit code, signed or unsigned


def subbyte_conv2d_nhwc(
    data: te.Tensor,
    weight: te.Tensor,
    in_channels: int,
    act: Encoding,
    wgt: Encoding,
    strides: tuple[int, int],
    padding: tuple[int, int, int, int],
) -> te.Tensor:
    """Exact integer conv2d of sub-byte packed codes (layouts in the module docstring).

    Parameters
    ----------
    data, weight : te.Tensor
        Packed activation and weight codes.
    in_channels : int
        C, the channel count before packing.
    act, wgt : Encoding
        Encodings of the activation and weight codes.
    strides : (int, int)
        (sh, sw).
    padding : (int, int, int, int)
        (top, left, bottom, right) zero padding.

    Returns
    -------
    te.Tensor
        int32 `[N, OH, OW, O]`.
    """
    batch, height, width, _ = (int(d) for d in data.shape)
    out_channels, kernel_h, kernel_w, _ = (int(d) for d in weight.shape)
    in_channels = int(in_channels)
    check_packed(data, act, in_channels, "data")
    check_packed(weight, wgt, in_channels, "weight")
    window = Window.of((height, width), (kernel_h, kernel_w), strides, padding)
    ky = te.reduce_axis((0, kernel_h), "ky")
    kx = te.reduce_axis((0, kernel_w), "kx")
    c = te.reduce_axis((0, in_channels), "c")

    # unpacked once per call (O·KH·KW·C and N·H·W·C values), not once per multiply-add
    a_values = te.compute(
        (batch, height, width, in_channels),
        lambda n, h, w, ch: value_at(data, (n, h, w), ch, act).astype(UNPACKED),
        name="subbyte_unpack",
    )
    w_values = te.compute(
        (out_channels, kernel_h, kernel_w, in_channels),
        lambda o, h, w, ch: value_at(weight, (o, h, w), ch, wgt).astype(UNPACKED),
        name="subbyte_unpack_weight",
    )

    def output(n, y, x, o):
        row, col, inside = window.tap(y, x, ky, kx)
        product = a_values[n, row, col, c].astype("int32") * w_values[o, ky, kx, c].astype("int32")
        if inside is not None:
            product = tirx.if_then_else(inside, product, 0)
        return te.sum(product, axis=[ky, kx, c])

    return te.compute((batch, *window.out_size, out_channels), output, name="subbyte_conv2d")
