"""Float activations to the integer codes the packing ops take (elementwise TE compute).

`binarize`: code 1 where x ≥ 0, else 0 (bipolar +1/−1). ONNX `Sign(0)` is 0, which one bit
cannot hold; tvmbits maps 0 to +1 as Larq's `ste_sign` and QONNX's `BipolarQuant` do.

`quantize`: value = clamp(round_half_even(x / scale) + zero_point, lo, hi) with the encoding's
value range (as ONNX QuantizeLinear), returned as int32 *values*; signed values are two's
complement, so bit i of the int32 is bit i of the k-bit code.
"""

from tvm import te, tirx

from tvmbits.ops.encoding import Encoding


def binarize(x: te.Tensor) -> te.Tensor:
    return te.compute(
        x.shape,
        lambda *i: tirx.Select(x(*i) >= tirx.const(0, x.dtype), 1, 0).astype("int32"),
        name="binarize",
    )


def quantize(x: te.Tensor, scale: float, encoding: Encoding, zero_point: int = 0) -> te.Tensor:
    lo, hi = encoding.value_range
    step = tirx.const(scale, x.dtype)

    def code(*i):
        q = tirx.nearbyint(x(*i) / step)
        if zero_point:
            q = q + tirx.const(zero_point, x.dtype)
        q = te.max(te.min(q, tirx.const(hi, x.dtype)), tirx.const(lo, x.dtype))
        return q.astype("int32")

    return te.compute(x.shape, code, name="quantize")


def binarize_threshold(acc: te.Tensor, lo: te.Tensor, hi: te.Tensor) -> te.Tensor:
    """The codes `binarize` gives for a float function of the int32 `acc` that FoldThresholds
    folded: 1 where lo[c] ≤ acc ≤ hi[c], c the last (channel) axis, else 0; `lo`, `hi` int64,
    compared in int64 (see `fold_thresholds.thresholds`)."""
    def code(*i):
        channel, value = i[-1], acc(*i).astype("int64")
        return tirx.all(lo[channel] <= value, value <= hi[channel]).astype("int32")

    return te.compute(acc.shape, code, name="binarize_threshold")
