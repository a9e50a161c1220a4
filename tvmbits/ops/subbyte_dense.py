"""Sub-byte dense layer: codes unpacked to int32 values in registers (TE compute `subbyte_dense`).

data   `[N, KB]` uint8, `subbyte_pack` of `[N, K]` activation codes;
weight `[O, KB]` uint8, `pack_subbyte` of `[O, K]` weight codes;
output `[N, O]` int32, exactly Σ_k value_a[n, k] · value_w[o, k].
"""

from tvm import te

from tvmbits.ops.encoding import Encoding
from tvmbits.ops.subbyte import check_packed, value_at


def subbyte_dense(
    data: te.Tensor, weight: te.Tensor, in_features: int, act: Encoding, wgt: Encoding
) -> te.Tensor:
    """Exact integer dense of sub-byte packed codes (layouts in the module docstring).

    Parameters
    ----------
    data, weight : te.Tensor
        Packed activation and weight codes.
    in_features : int
        K, the feature count before packing.
    act, wgt : Encoding
        Encodings of the activation and weight codes.

    Returns
    -------
    te.Tensor
        int32 `[N, O]`.
    """
    in_features = int(in_features)
    check_packed(data, act, in_features, "data")
    check_packed(weight, wgt, in_features, "weight")
    k = te.reduce_axis((0, in_features), "k")

    def output(n, o):
        return te.sum(value_at(data, (n,), k, act) * value_at(weight, (o,), k, wgt), axis=k)

    return te.compute((int(data.shape[0]), int(weight.shape[0])), output, name="subbyte_dense")
