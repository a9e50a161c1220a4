"""Bit-serial conv2d and dense as one AND-popcount GEMM (TE computes `bitserial_gemm` and its
epilogue): the form the GPU schedules tensorize into the 1-bit tensor-core MMA.

PTX `mma ... .b1` sums popc(A ∧ W) (`.and.popc`, sm_80 and later; `.xor.popc` is gone from
sm_90), so this form sums only AND counts. The operands and result are those of
`bitserial_conv2d_nhwc` / `bitserial_dense` (same packed layouts, same int32 output, bit for bit);
only the way the sum is split differs. With a = α + Σ_i c_i A_i and w = β + Σ_j d_j W_j
(`Encoding.coefficients`, `Encoding.offset`), over the taps inside the input:

    Σ a·w = Σ_i Σ_j c_i d_j P[i, j]                   (the GEMM, popc(A_i ∧ W_j) summed)
          + β Σ_i c_i Σ popc(A_i)                      (per output pixel)
          + α Σ_j d_j Σ_inside popc(W_j)               (per border class and output channel)
          + αβ · C · (taps inside)                     (per output pixel)

Bipolar × bipolar (α = β = −1, c = d = 2): 4·P − 2·Σ popc(A) − 2·Σ_inside popc(W) + C·inside.

GEMM layout (`bitserial_im2col`, `bitserial_weight_matrix`, both plain index maps of the packed
operands that the schedule reads straight into shared memory):
rows r = (pixel m, activation plane i) as m·act.bits + i, m = (n·OH + y)·OW + x;
columns c = (output channel o, weight plane j) as o·wgt.bits + j;
reduction k = (ky, kx, word) as (ky·KW + kx)·words + word, over uint32 words.
The activations are read from an input padded with zero words (`pad_packed`), so a padded
tap adds 0 to every AND count and to every Σ popc(A_i) whatever the encoding; the taps'
padding is accounted for only by the weight term's border table and C·inside.
"""

from tvm import te, tirx

from tvmbits.ops.bitpack import check_packed
from tvmbits.ops.bitserial_conv2d import pad_packed
from tvmbits.ops.encoding import Encoding
from tvmbits.ops.window import Window

GEMM = "bitserial_gemm"  # the block the GPU schedules tensorize


def bitserial_conv2d_gemm(
    data: te.Tensor,
    weight: te.Tensor,
    in_channels: int,
    act: Encoding,
    wgt: Encoding,
    strides: tuple[int, int],
    padding: tuple[int, int, int, int],
    offset: te.Tensor | None = None,
    weight_term: te.Tensor | None = None,
) -> te.Tensor:
    """`bitserial_conv2d_nhwc` (same arguments, layouts and int32 `[N, OH, OW, O]` result) as an
    AND-popcount GEMM and an epilogue (module docstring). `offset`, when given, is
    `window_offset` of the same data: the β term, computed beforehand; `weight_term`, when given,
    is `weight_sums` of the same weights (the compiler folds it into a constant). Either is
    computed here when needed and not given."""
    batch, height, width, _, packed_words = (int(d) for d in data.shape)
    out_channels, kernel_h, kernel_w, _, _ = (int(d) for d in weight.shape)
    in_channels = int(in_channels)
    check_packed(data, act, in_channels, "data")
    check_packed(weight, wgt, in_channels, "weight")
    window = Window.of((height, width), (kernel_h, kernel_w), strides, padding)
    out_h, out_w = window.out_size
    source = pad_packed(data, padding) if any(padding) else data
    read = window.padded() if any(padding) else window
    per_tap = kernel_w * packed_words

    def pixel(m):
        return m // (out_h * out_w), m // out_w % out_h, m % out_w

    def tap(k):
        return k // per_tap, k // packed_words % kernel_w, k % packed_words

    def im2col(r, k):
        n, y, x = pixel(r // act.bits)
        ky, kx, word = tap(k)
        row, col, _ = read.tap(y, x, ky, kx)
        return source[n, row, col, r % act.bits, word]

    reduction = kernel_h * per_tap
    cols = te.compute((batch * out_h * out_w * act.bits, reduction), im2col, name="bitserial_im2col")
    rows = te.compute(
        (out_channels * wgt.bits, reduction),
        lambda c, k: weight[(c // wgt.bits, *tap(k)[:2], c % wgt.bits, tap(k)[2])],
        name="bitserial_weight_matrix",
    )
    products = and_popcount_gemm(cols, rows)
    pixel_term = None
    if wgt.offset and offset is None:
        pixel_term = _activation_sums(cols, act, wgt.offset)
    if act.offset and weight_term is None:
        weight_term = weight_sums(weight, act, wgt, window)

    def output(n, y, x, o):
        m = (n * out_h + y) * out_w + x
        terms = []  # the tables first, the GEMM last (see `_sum`)
        if wgt.offset:
            terms.append(offset[n, y, x] if offset is not None else pixel_term[m])
        if act.offset:
            terms.append(weight_term[window.border_class(y, 0), window.border_class(x, 1), o])
            if wgt.offset:
                terms.append(act.offset * wgt.offset * in_channels * window.taps_inside(y, x))
        return _sum(terms + [_plane_sum(products, m, o, act, wgt)])

    return te.compute((batch, out_h, out_w, out_channels), output, name="bitserial_gemm_epilogue")


def bitserial_dense_gemm(
    data: te.Tensor,
    weight: te.Tensor,
    in_features: int,
    act: Encoding,
    wgt: Encoding,
    offset: te.Tensor | None = None,
    weight_term: te.Tensor | None = None,
) -> te.Tensor:
    """`bitserial_dense` (same arguments, layouts and int32 `[N, O]` result) as an
    AND-popcount GEMM and an epilogue (module docstring, with one tap and no padding).
    `offset`, when given, is `row_offset` of the same data, `weight_term` `weight_sums` of the
    same weights (`[1, 1, O]`)."""
    batch, _, packed_words = (int(d) for d in data.shape)
    out_features = int(weight.shape[0])
    in_features = int(in_features)
    check_packed(data, act, in_features, "data")
    check_packed(weight, wgt, in_features, "weight")
    cols = te.compute((batch * act.bits, packed_words), lambda r, k: data[r // act.bits, r % act.bits, k],
                      name="bitserial_im2col")
    rows = te.compute((out_features * wgt.bits, packed_words), lambda c, k: weight[c // wgt.bits, c % wgt.bits, k],
                      name="bitserial_weight_matrix")
    products = and_popcount_gemm(cols, rows)
    pixel_term = _activation_sums(cols, act, wgt.offset) if wgt.offset and offset is None else None
    if act.offset and weight_term is None:
        weight_term = weight_sums(weight, act, wgt)

    def output(n, o):
        terms = []  # the tables first, the GEMM last (see `_sum`)
        if wgt.offset:
            terms.append(offset[n] if offset is not None else pixel_term[n])
        if act.offset:
            terms.append(weight_term[0, 0, o])
            if wgt.offset:
                terms.append(act.offset * wgt.offset * in_features)
        return _sum(terms + [_plane_sum(products, n, o, act, wgt)])

    return te.compute((batch, out_features), output, name="bitserial_gemm_epilogue")


def and_popcount_gemm(cols: te.Tensor, rows: te.Tensor) -> te.Tensor:
    """int32 `[R, C]`: Σ_k popc(cols[r, k] ∧ rows[c, k]) over uint32 words (TE compute `GEMM`)."""
    k = te.reduce_axis((0, int(cols.shape[1])), "k")
    return te.compute(
        (int(cols.shape[0]), int(rows.shape[0])),
        lambda r, c: te.sum(tirx.popcount(cols[r, k] & rows[c, k]).astype("int32"), axis=k),
        name=GEMM,
    )


def _sum(terms: list):
    """Σ terms, in order. The epilogues add the corrections before the GEMM's sum, so that
    `te.create_prim_func` puts the blocks computing them before the GEMM block: the GPU schedule
    computes the epilogue inside the GEMM's thread blocks, which needs its other inputs ready."""
    total = terms[0]
    for term in terms[1:]:
        total = total + term
    return total


def _plane_sum(products: te.Tensor, m, o, act: Encoding, wgt: Encoding):
    """Σ_i Σ_j c_i d_j P[m·act.bits + i, o·wgt.bits + j]."""
    total = None
    for i, c in enumerate(act.coefficients):
        for j, d in enumerate(wgt.coefficients):
            term = c * d * products[m * act.bits + i, o * wgt.bits + j]
            total = term if total is None else total + term
    return total


def _activation_sums(cols: te.Tensor, act: Encoding, beta: int) -> te.Tensor:
    """int32 `[pixels]`: β Σ_i c_i Σ_k popc(A_i), from the im2col rows (TE compute
    `bitserial_activation_sum`)."""
    k = te.reduce_axis((0, int(cols.shape[1])), "ak")

    def total(m):
        terms = [c * tirx.popcount(cols[m * act.bits + i, k]).astype("int32") for i, c in enumerate(act.coefficients)]
        value = terms[0]
        for term in terms[1:]:
            value = value + term
        return te.sum(beta * value, axis=k)

    return te.compute((int(cols.shape[0]) // act.bits,), total, name="bitserial_activation_sum")


def weight_sums(weight: te.Tensor, act: Encoding, wgt: Encoding, window: Window | None = None) -> te.Tensor:
    """int32 `[row classes, column classes, O]`: the weight term α Σ_j d_j Σ popc(W_j) over the
    taps inside the input of each border class (`Window.border_class`) of a conv's `window`;
    `[1, 1, O]` over all of a dense layer's weight (`[O, planes, words]`, no window). It
    depends on the weights only (TE computes `bitserial_weight_plane_sum` and
    `bitserial_weight_border`)."""
    alpha = act.offset
    if window is None:
        weight = te.compute((*weight.shape[:1], 1, 1, *weight.shape[1:]), lambda o, _y, _x, j, w: weight[o, j, w],
                            name="bitserial_weight_tap")
        window = Window((1, 1), (1, 1), (1, 1), (0, 0, 0, 0))
    out_channels, kernel_h, kernel_w, _, packed_words = (int(d) for d in weight.shape)
    w = te.reduce_axis((0, packed_words), "ww")

    def plane_sum(ky, kx, o):
        terms = [d * tirx.popcount(weight[o, ky, kx, j, w]).astype("int32") for j, d in enumerate(wgt.coefficients)]
        value = terms[0]
        for term in terms[1:]:
            value = value + term
        return te.sum(value, axis=w)

    sums = te.compute((kernel_h, kernel_w, out_channels), plane_sum, name="bitserial_weight_plane_sum")

    def entry(row_class, col_class, o):
        y, x = window.class_member(row_class, 0), window.class_member(col_class, 1)
        total = tirx.const(0, "int32")
        for ky in range(kernel_h):
            for kx in range(kernel_w):
                inside = tirx.all(window.tap_inside(y, ky, 0), window.tap_inside(x, kx, 1)).astype("int32")
                total = total + inside * sums[ky, kx, o]
        return alpha * total

    shape = (window.class_count(0), window.class_count(1), out_channels)
    return te.compute(shape, entry, name="bitserial_weight_border")

