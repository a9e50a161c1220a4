"""Bit-serial NHWC conv2d of bit-plane packed operands (TE compute `bitserial_conv2d`).

data   `[N, H, W, act.bits, ceil(C/32)]` uint32, `bitpack` of NHWC activation codes;
weight `[O, KH, KW, wgt.bits, ceil(C/32)]` uint32, `pack_bits` of OHWI weight codes;
output `[N, OH, OW, O]` int32, exactly Σ value_a · value_w over the taps inside the input
(bipolar × bipolar: the mismatch count summed in `bitserial_conv2d`, finished by `bipolar_dot`;
bipolar weights × multi-bit activations: the β term, β times the window's Σ a, is summed once
per pixel by `window_offset` and added after the reduction).
Padded taps contribute 0, also for bipolar activations (a padded pixel is value 0, not −1).

So that the hot loop tests no tap for padding, the kernel reads its input padded with zero
words wherever a zero word is worth what a padded tap must count (`reads_padded_input`): value 0
for unsigned and signed activation codes, whatever the weights. The compiler has the producer
write that padded layout (`bitpack` with the conv's padding, `padded_input=True`), so the conv
function makes no copy; given the packed input alone, the kernel makes the padded copy itself
(`bitserial_pad`, a few rows larger than the packed input). A bipolar zero word is −1, not 0:
for bipolar × bipolar each padded tap adds popc(W) mismatches, so the epilogue's n
(`bipolar_dot`) is read from `border_table`, C·(taps inside) + 2·Σ popc(W) over the padded
taps, one row of O entries per border class (`Window.border_class`: a handful of classes),
where the output is large enough for the padded input to pay (`MIN_PIXELS_FOR_BORDER_TABLE`,
`reads_border_table`). The table depends on the weights only: the compiler computes it once, at
compile time, and passes it in. Bipolar activations with multi-bit weights keep the per-tap test.
"""

from tvm import te, tirx

from tvmbits.ops.bitpack import check_packed, words
from tvmbits.ops.bitserial_term import activation_terms, bipolar_dot, has_offset, is_bipolar_pair, mismatches, word_dot
from tvmbits.ops.encoding import Encoding
from tvmbits.ops.window import Window

# Below this many output pixels per image a bipolar × bipolar conv keeps the per-tap test: on 7×7
# outputs with 512 channels the padded copy of the input, made per call, measured no faster than
# the test (0.066 vs 0.063 ms, then 0.079 vs 0.080 ms, alternating in one process).
MIN_PIXELS_FOR_BORDER_TABLE = 64


def bitserial_conv2d_nhwc(
    data: te.Tensor,
    weight: te.Tensor,
    in_channels: int,
    act: Encoding,
    wgt: Encoding,
    strides: tuple[int, int],
    padding: tuple[int, int, int, int],
    offset: te.Tensor | None = None,
    border: te.Tensor | None = None,
    padded_input: bool = False,
) -> te.Tensor:
    """Exact integer conv2d of packed codes (layouts in the module docstring).

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
    offset : te.Tensor, optional
        `window_offset` of the same data, computed beforehand (the compiler emits it as its own
        function, so the kernel's epilogue reads it as an input); computed here when None.
        Used only for bipolar weights with multi-bit activations.
    border : te.Tensor, optional
        `border_table` of the same weights and window, computed beforehand (the compiler folds it
        into a constant); required where `reads_border_table`, unused elsewhere.
    padded_input : bool
        `data` holds the padding already, as `bitpack(..., padding)` writes it: `[N, top + H +
        bottom, left + W + right, ...]`, zero words around the pixels; only where
        `reads_padded_input`.

    Returns
    -------
    te.Tensor
        int32 `[N, OH, OW, O]`.
    """
    batch, height, width, _, _ = (int(d) for d in data.shape)
    out_channels, kernel_h, kernel_w, _, _ = (int(d) for d in weight.shape)
    in_channels = int(in_channels)
    check_packed(data, act, in_channels, "data")
    check_packed(weight, wgt, in_channels, "weight")
    top, left, bottom, right = (int(p) for p in padding)
    if padded_input:
        height, width = height - top - bottom, width - left - right
    window = Window.of((height, width), (kernel_h, kernel_w), strides, padding)
    ky = te.reduce_axis((0, kernel_h), "ky")
    kx = te.reduce_axis((0, kernel_w), "kx")
    word = te.reduce_axis((0, words(in_channels)), "word")
    bipolar = is_bipolar_pair(act, wgt)
    if reads_border_table(act, wgt, window) and border is None:
        raise ValueError("a bipolar conv over a padded input needs its border table (`border_table`)")
    padded = reads_padded_input(act, wgt, window)
    if padded_input and not padded:
        raise ValueError(f"a {act} × {wgt} conv with padding {padding} reads its input unpadded")
    read = window.padded() if padded else window
    source = data if padded_input or not padded else pad_packed(data, padding)

    def output(n, y, x, o):
        row, col, inside = read.tap(y, x, ky, kx)
        if bipolar:
            term = mismatches(source[n, row, col, 0, word], weight[o, ky, kx, 0, word])
        else:
            term = word_dot(
                lambda i: source[n, row, col, i, word], lambda j: weight[o, ky, kx, j, word], act, wgt
            )
        if inside is not None:
            term = tirx.if_then_else(inside, term, 0)
        return te.sum(term, axis=[ky, kx, word])

    out = te.compute((batch, *window.out_size, out_channels), output, name="bitserial_conv2d")
    if bipolar and padded:
        return bipolar_dot(out, lambda n, y, x, o: border[window.border_class(y, 0), window.border_class(x, 1), o])
    if bipolar:
        return bipolar_dot(out, lambda n, y, x, o: in_channels * window.taps_inside(y, x))
    if not has_offset(act, wgt):
        return out
    if offset is None:
        offset = window_offset(source, in_channels, act, wgt, (kernel_h, kernel_w), strides, read.padding)
    return te.compute(out.shape, lambda n, y, x, o: out[n, y, x, o] + offset[n, y, x], name="bitserial_add_offset")


def reads_padded_input(act: Encoding, wgt: Encoding, window: Window) -> bool:
    """Whether the conv of `act` × `wgt` codes over `window` reads its input padded with zero
    words (module docstring): the window pads, and the activations are unsigned or signed codes
    (a zero word is value 0), or bipolar × bipolar where `reads_border_table`."""
    if not any(window.padding):
        return False
    return reads_border_table(act, wgt, window) if is_bipolar_pair(act, wgt) else not act.offset


def reads_border_table(act: Encoding, wgt: Encoding, window: Window) -> bool:
    """Whether the conv of `act` × `wgt` codes over `window` reads a zero-padded input and
    restores the padded taps from `border_table` (bipolar × bipolar, padded, output large enough)."""
    out_pixels = window.out_size[0] * window.out_size[1]
    return (is_bipolar_pair(act, wgt) and any(window.padding)
            and out_pixels >= MIN_PIXELS_FOR_BORDER_TABLE)


def pad_packed(data: te.Tensor, padding: tuple[int, int, int, int]) -> te.Tensor:
    """`[N, H, W, planes, words]` packed codes with (top, left, bottom, right) rows and columns
    of zero words around them (TE compute `bitserial_pad`)."""
    batch, height, width, planes, packed_words = (int(d) for d in data.shape)
    top, left, bottom, right = (int(p) for p in padding)
    zero = tirx.const(0, data.dtype)

    def word(n, y, x, plane, w):
        inside = tirx.all(y >= top, y < top + height, x >= left, x < left + width)
        return tirx.if_then_else(inside, data[n, y - top, x - left, plane, w], zero)

    shape = (batch, height + top + bottom, width + left + right, planes, packed_words)
    return te.compute(shape, word, name="bitserial_pad")


def border_table(weight: te.Tensor, in_channels: int, window: Window) -> te.Tensor:
    """int32 `[row classes, column classes, O]`: for the outputs of each border class, the n of
    `bipolar_dot` that turns the mismatches summed over a zero-padded input into Σ a·w:
    C·(taps inside) + 2·Σ popc(W) over the taps outside, the mismatches a zero (−1) word adds
    there (TE computes `bitserial_weight_popcount` and `bitserial_border`). The weights are
    `[O, KH, KW, 1, words]` packed bipolar codes, the same `bitserial_conv2d_nhwc` reads."""
    out_channels, kernel_h, kernel_w, _, packed_words = (int(d) for d in weight.shape)
    word = te.reduce_axis((0, packed_words), "pw")
    ones = te.compute(  # channels innermost, so that both tables vectorise along them
        (kernel_h, kernel_w, out_channels),
        lambda ky, kx, o: te.sum(tirx.popcount(weight[o, ky, kx, 0, word]).astype("int32"), axis=word),
        name="bitserial_weight_popcount",
    )

    def entry(row_class, col_class, o):
        y, x = window.class_member(row_class, 0), window.class_member(col_class, 1)
        total = tirx.const(0, "int32")
        for ky in range(kernel_h):
            for kx in range(kernel_w):
                # branch-free (a 0/1 factor, not if_then_else) so that it vectorises along o
                inside = tirx.all(window.tap_inside(y, ky, 0), window.tap_inside(x, kx, 1)).astype("int32")
                total = total + inside * in_channels + (1 - inside) * 2 * ones[ky, kx, o]
        return total

    return te.compute((window.class_count(0), window.class_count(1), out_channels), entry, name="bitserial_border")


def window_offset(
    data: te.Tensor,
    in_channels: int,
    act: Encoding,
    wgt: Encoding,
    kernel: tuple[int, int],
    strides: tuple[int, int],
    padding: tuple[int, int, int, int],
) -> te.Tensor:
    """int32 `[N, OH, OW]`: β · Σ value_a over each output's window (taps inside the input, real
    channels); the part of the conv that does not depend on the output channel, summed once
    per pixel instead of once per output channel."""
    batch, height, width, _, _ = (int(d) for d in data.shape)
    window = Window.of((height, width), kernel, strides, padding)
    taps = [te.reduce_axis((0, size), name) for size, name in zip(window.kernel, ("ty", "tx"))]
    word = te.reduce_axis((0, words(int(in_channels))), "tw")

    def window_sum(n, y, x):
        row, col, inside = window.tap(y, x, *taps)
        term = wgt.offset * activation_terms(lambda i: data[n, row, col, i, word], act)
        if inside is not None:
            term = tirx.if_then_else(inside, term, 0)
        return te.sum(term, axis=[*taps, word])

    return te.compute((batch, *window.out_size), window_sum, name="bitserial_offset")
