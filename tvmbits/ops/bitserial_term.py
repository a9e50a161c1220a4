"""The per-word term shared by the bit-serial kernels: Σ value_a · value_w over one uint32 word.

With a = α + Σ_i c_i A_i and w = β + Σ_j d_j W_j (`Encoding.coefficients` and `offset`, A_i and
W_j the bit planes), summed over the n real channels of a word:

    Σ a·w = Σ_i Σ_j c_i d_j popc(A_i ∧ W_j) + β Σ_i c_i popc(A_i) + α Σ_j d_j popc(W_j) + αβ n

α, β ≠ 0 only for bipolar operands. The β term does not depend on the output channel: the
kernels sum it once per output pixel (`activation_terms`), not once per channel. Bipolar × bipolar is n − 2 popc(A ⊕ W); its kernels sum
only the mismatches popc(A ⊕ W) (`mismatches`) over the whole reduction and apply
`bipolar_dot` once per output, which keeps one popcount and one add per word in the hot loop.
Channel-padding bits are 0 in both operands (see `bitpack`), so every popcount sees only real
channels and n is the only place the channel count enters.
"""

from collections.abc import Callable

from tvm import te, tirx
from tvm.ir import Expr

from tvmbits.ops.encoding import Encoding


def is_bipolar_pair(act: Encoding, wgt: Encoding) -> bool:
    return act.kind == wgt.kind == "bipolar"


def has_offset(act: Encoding, wgt: Encoding) -> bool:
    """Whether Σ a·w has a β term summed apart (`activation_terms`): bipolar weights with
    multi-bit activations."""
    return bool(wgt.offset) and not is_bipolar_pair(act, wgt)


def mismatches(a_word: Expr, w_word: Expr) -> Expr:
    """int32 popc(A ⊕ W): the channels of one word where ±1 activation and weight differ."""
    return tirx.popcount(a_word ^ w_word).astype("int32")


def bipolar_dot(mismatch_sum: te.Tensor, matches_possible) -> te.Tensor:
    """Σ a·w = n − 2·(mismatches), n = `matches_possible(*index)`: the real channels times the
    taps inside the input (an int or an int32 expression of the output index)."""
    return te.compute(
        mismatch_sum.shape,
        lambda *i: matches_possible(*i) - 2 * mismatch_sum(*i),
        name="bipolar_dot",
    )


def word_dot(a_word: Callable[[int], Expr], w_word: Callable[[int], Expr], act: Encoding, wgt: Encoding) -> Expr:
    """int32 Σ value_a · value_w over one word, less β Σ_i c_i popc(A_i) (`activation_terms`,
    which does not depend on the output channel: the kernels sum it once per pixel).

    Parameters
    ----------
    a_word, w_word : callable
        Plane index → that plane's uint32 word of the activation / weight.
    act, wgt : Encoding
        Encodings of the activation and weight codes (not both bipolar: see `mismatches`).
    """
    if act.kind == wgt.kind == "bipolar":
        raise ValueError("bipolar × bipolar words are summed with `mismatches`")
    terms = [
        c * d * _popc(a_word(i) & w_word(j))
        for i, c in enumerate(act.coefficients)
        for j, d in enumerate(wgt.coefficients)
    ]
    if act.offset:
        terms += [act.offset * d * _popc(w_word(j)) for j, d in enumerate(wgt.coefficients)]
    return _add(terms)


def activation_terms(a_word: Callable[[int], Expr], act: Encoding) -> Expr:
    """int32 Σ_i c_i popc(A_i) over one word: Σ value_a over its real channels (padding bits are
    0), the part of Σ a·w that β multiplies."""
    return _add([c * _popc(a_word(i)) for i, c in enumerate(act.coefficients)])


def _popc(word: Expr) -> Expr:
    return tirx.popcount(word).astype("int32")


def _add(terms: list) -> Expr:
    total = terms[0]
    for term in terms[1:]:
        total = total + term
    return total
