"""Bit-serial dense layer of bit-plane packed operands (TE compute `bitserial_dense`).

data   `[N, act.bits, ceil(K/32)]` uint32, `bitpack` of `[N, K]` activation codes;
weight `[O, wgt.bits, ceil(K/32)]` uint32, `pack_bits` of `[O, K]` weight codes;
output `[N, O]` int32, exactly Σ_k value_a[n, k] · value_w[o, k].
"""

from tvm import te

from tvmbits.ops.bitpack import check_packed, words
from tvmbits.ops.bitserial_term import bipolar_dot, is_bipolar_pair, mismatches, word_dot
from tvmbits.ops.encoding import Encoding


def bitserial_dense(
    data: te.Tensor, weight: te.Tensor, in_features: int, act: Encoding, wgt: Encoding
) -> te.Tensor:
    """Exact integer dense of packed codes (layouts in the module docstring).

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
    word = te.reduce_axis((0, words(in_features)), "word")

    bipolar = is_bipolar_pair(act, wgt)

    def output(n, o):
        if bipolar:
            term = mismatches(data[n, 0, word], weight[o, 0, word])
        else:
            term = word_dot(
                lambda i: data[n, i, word], lambda j: weight[o, j, word], act, wgt, in_features, word
            )
        return te.sum(term, axis=word)

    out = te.compute((int(data.shape[0]), int(weight.shape[0])), output, name="bitserial_dense")
    return bipolar_dot(out, lambda n, o: in_features) if bipolar else out
