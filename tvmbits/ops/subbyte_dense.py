"""Sub-byte dense layer as byte dot products (TE compute `subbyte_dense`).

data   `[N, KP]` uint8, `subbyte_pack` of `[N, K]` activations (biased values);
weight `[ceil(O/16), KP/4, 16, 4]` int8/uint8, `block_weight` of `[O, K]` weight values;
output `[N, O]` int32, exactly Σ_k value_a[n, k] · value_w[o, k] (the sum of biased values
corrected by `weight_offset`).
"""

from tvm import te

from tvmbits.ops.encoding import Encoding
from tvmbits.ops.subbyte import (DATA_MAX, DOT, WEIGHT_MAX, bias, check_packed, data_max, weight_max,
                                 weight_offset_te)


def subbyte_dense(
    data: te.Tensor,
    weight: te.Tensor,
    in_features: int,
    out_features: int,
    act: Encoding,
    wgt: Encoding,
    offset: te.Tensor | None = None,
) -> te.Tensor:
    """Exact integer dense of sub-byte operands (layouts in the module docstring).

    Parameters
    ----------
    data, weight : te.Tensor
        Biased activations and blocked weight bytes.
    in_features, out_features : int
        K and O, before padding.
    act, wgt : Encoding
        Encodings of the activation and weight values.
    offset : te.Tensor, optional
        int32 `[O]`, `weight_offset` of the weights; computed here when None.

    Returns
    -------
    te.Tensor
        int32 `[N, O]`.
    """
    check_packed(data, weight, int(in_features), wgt)
    lanes = int(weight.shape[-2])
    k = te.reduce_axis((0, int(data.shape[-1])), "k")

    def output(n, o):
        w = weight[o // lanes, k // DOT, o % lanes, k % DOT].astype("int32")
        return te.sum(data[n, k].astype("int32") * w, axis=k)

    out = te.compute((int(data.shape[0]), int(out_features)), output, name="subbyte_dense",
                     attrs={DATA_MAX: data_max(act), WEIGHT_MAX: weight_max(wgt)})
    if not bias(act):
        return out
    if offset is None:
        offset = weight_offset_te(weight, act, int(out_features))
    return te.compute(out.shape, lambda n, o: out[n, o] - offset[o], name="subbyte_unbias")
