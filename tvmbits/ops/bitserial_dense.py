"""Bit-serial dense layer of bit-plane packed operands (TE compute `bitserial_dense`).

data   `[N, act.bits, ceil(K/32)]` uint32, `bitpack` of `[N, K]` activation codes;
weight `[O, wgt.bits, ceil(K/32)]` uint32, `pack_bits` of `[O, K]` weight codes;
output `[N, O]` int32, exactly Σ_k value_a[n, k] · value_w[o, k].
"""

from tvm import te

from tvmbits.ops.bitpack import check_packed, words
from tvmbits.ops.bitserial_term import activation_terms, bipolar_dot, has_offset, is_bipolar_pair, mismatches, word_dot
from tvmbits.ops.encoding import Encoding


def bitserial_dense(
    data: te.Tensor,
    weight: te.Tensor,
    in_features: int,
    act: Encoding,
    wgt: Encoding,
    offset: te.Tensor | None = None,
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
    offset : te.Tensor, optional
        `row_offset` of the same data, computed beforehand; computed here when None. Used
        only for bipolar weights with multi-bit activations.

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
            term = word_dot(lambda i: data[n, i, word], lambda j: weight[o, j, word], act, wgt)
        return te.sum(term, axis=word)

    out = te.compute((int(data.shape[0]), int(weight.shape[0])), output, name="bitserial_dense")
    if bipolar:
        return bipolar_dot(out, lambda n, o: in_features)
    if not has_offset(act, wgt):
        return out
    if offset is None:
        offset = row_offset(data, in_features, act, wgt)
    return te.compute(out.shape, lambda n, o: out[n, o] + offset[n], name="bitserial_add_offset")


def row_offset(data: te.Tensor, in_features: int, act: Encoding, wgt: Encoding) -> te.Tensor:
    """int32 `[N]`: β · Σ_k value_a[n, k], the part of the dense that does not depend on the
    output channel."""
    word = te.reduce_axis((0, words(int(in_features))), "rw")
    return te.compute(
        (int(data.shape[0]),),
        lambda n: te.sum(wgt.offset * activation_terms(lambda i: data[n, i, word], act), axis=word),
        name="bitserial_offset",
    )
