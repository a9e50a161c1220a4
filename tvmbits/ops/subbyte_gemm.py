"""Sub-byte conv2d and dense as one byte GEMM (TE compute `subbyte_gemm` and its epilogue):
the form the GPU schedules tensorize into the integer tensor-core MMA (uint8 × int8/uint8).

Operands and result are those of `subbyte_conv2d_nhwc` / `subbyte_dense` (same layouts, same
int32 output, bit for bit): biased uint8 activations u = value + bias, blocked weight values,
Σ value_a · value_w = Σ u·w − bias·Σ w (`weight_offset`, subtracted by the epilogue).

GEMM layout (`subbyte_im2col`, `subbyte_weight_matrix`, plain index maps of the operands that
the schedule reads straight into shared memory): rows = pixels m = (n·OH + y)·OW + x; columns =
output channels o; reduction k = (ky·KW + kx)·CP + c over bytes, CP the padded channel count.
The activations are read from the input padded with the bias byte (`subbyte_pad`, value 0),
so padded taps add bias·w, which `weight_offset` (over all taps) takes away again, exactly as
in `subbyte_conv2d_nhwc`.
"""

from tvm import te

from tvmbits.ops.encoding import Encoding
from tvmbits.ops.subbyte import DOT, bias, check_packed, weight_offset_te
from tvmbits.ops.subbyte_conv2d import _pad
from tvmbits.ops.window import Window

GEMM = "subbyte_gemm"  # the block the GPU schedules tensorize


def subbyte_conv2d_gemm(
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
    """`subbyte_conv2d_nhwc` (same arguments, layouts and int32 `[N, OH, OW, O]` result) as a
    byte GEMM and an epilogue (module docstring)."""
    batch, height, width, channels = (int(d) for d in data.shape)
    _, kernel_h, kernel_w, _, lanes, _ = (int(d) for d in weight.shape)
    out_channels = int(out_channels)
    check_packed(data, weight, int(in_channels), wgt)
    window = Window.of((height, width), (kernel_h, kernel_w), strides, padding)
    out_h, out_w = window.out_size
    padded = _pad(data, window, bias(act))
    (sh, sw), per_tap = window.strides, kernel_w * channels

    def im2col(m, k):
        n, y, x = m // (out_h * out_w), m // out_w % out_h, m % out_w
        ky, kx, c = k // per_tap, k // channels % kernel_w, k % channels
        return padded[n, y * sh + ky, x * sw + kx, c]

    def weight_row(o, k):
        ky, kx, c = k // per_tap, k // channels % kernel_w, k % channels
        return weight[o // lanes, ky, kx, c // DOT, o % lanes, c % DOT]

    reduction = kernel_h * per_tap
    cols = te.compute((batch * out_h * out_w, reduction), im2col, name="subbyte_im2col")
    rows = te.compute((out_channels, reduction), weight_row, name="subbyte_weight_matrix")
    products = byte_gemm(cols, rows)
    if bias(act) and offset is None:
        offset = weight_offset_te(weight, act, out_channels)

    def output(n, y, x, o):  # the offset first: its block then comes before the GEMM's (bitserial_gemm._sum)
        total = products[(n * out_h + y) * out_w + x, o]
        return -offset[o] + total if bias(act) else total

    return te.compute((batch, out_h, out_w, out_channels), output, name="subbyte_gemm_epilogue")


def subbyte_dense_gemm(
    data: te.Tensor,
    weight: te.Tensor,
    in_features: int,
    out_features: int,
    act: Encoding,
    wgt: Encoding,
    offset: te.Tensor | None = None,
) -> te.Tensor:
    """`subbyte_dense` (same arguments, layouts and int32 `[N, O]` result) as a byte GEMM and an
    epilogue (module docstring, one tap)."""
    out_features = int(out_features)
    check_packed(data, weight, int(in_features), wgt)
    lanes = int(weight.shape[-2])
    rows = te.compute(
        (out_features, int(data.shape[-1])),
        lambda o, k: weight[o // lanes, k // DOT, o % lanes, k % DOT],
        name="subbyte_weight_matrix",
    )
    products = byte_gemm(data, rows)
    if bias(act) and offset is None:
        offset = weight_offset_te(weight, act, out_features)

    def output(n, o):
        return -offset[o] + products[n, o] if bias(act) else products[n, o]

    return te.compute((int(data.shape[0]), out_features), output, name="subbyte_gemm_epilogue")


def byte_gemm(cols: te.Tensor, rows: te.Tensor) -> te.Tensor:
    """int32 `[R, C]`: Σ_k cols[r, k] · rows[c, k] of uint8 × int8/uint8 bytes (TE compute `GEMM`)."""
    k = te.reduce_axis((0, int(cols.shape[1])), "k")
    return te.compute(
        (int(cols.shape[0]), int(rows.shape[0])),
        lambda r, c: te.sum(cols[r, k].astype("int32") * rows[c, k].astype("int32"), axis=k),
        name=GEMM,
    )
