"""How a k-bit integer *code* (what is stored and packed) stands for a *value* (what is multiplied).

- bipolar (k = 1): code 1 ↔ +1, code 0 ↔ −1.
- unsigned: value = code, 0 … 2^k−1.
- signed: two's complement in k bits, value −2^(k−1) … 2^(k−1)−1, code = value & (2^k−1).

Every kind is affine in the code's bits: value = offset + Σ_i coefficient_i · bit_i(code), with
coefficients 2^i (the top one −2^(k−1) for signed; 2 for bipolar) and offset −1 for bipolar, 0
otherwise. The bit-serial kernels expand the product of two such sums; the sub-byte kernels and
the reference use `value_of`.
"""

from dataclasses import dataclass

import numpy as np


KINDS = ("bipolar", "unsigned", "signed")
MAX_BITS = 8


@dataclass(frozen=True)
class Encoding:
    kind: str
    bits: int

    def __post_init__(self):
        if self.kind not in KINDS:
            raise ValueError(f"unknown encoding {self.kind!r}: use one of {', '.join(KINDS)}")
        if not 1 <= self.bits <= MAX_BITS:
            raise ValueError(f"{self.kind} encoding with {self.bits} bits: bits must be 1 to {MAX_BITS}")
        if self.kind == "bipolar" and self.bits != 1:
            raise ValueError(f"bipolar encoding with {self.bits} bits: bipolar is 1 bit")

    @property
    def coefficients(self) -> tuple[int, ...]:
        """Weight of bit plane i in the value (see the module docstring)."""
        if self.kind == "bipolar":
            return (2,)
        planes = [1 << i for i in range(self.bits)]
        if self.kind == "signed":
            planes[-1] = -planes[-1]
        return tuple(planes)

    @property
    def offset(self) -> int:
        """The value of code 0 with all bits clear: −1 for bipolar, else 0."""
        return -1 if self.kind == "bipolar" else 0

    @property
    def value_range(self) -> tuple[int, int]:
        """Smallest and largest value, inclusive."""
        if self.kind == "bipolar":
            return -1, 1
        if self.kind == "unsigned":
            return 0, (1 << self.bits) - 1
        return -(1 << (self.bits - 1)), (1 << (self.bits - 1)) - 1

    @property
    def mask(self) -> int:
        return (1 << self.bits) - 1

    def value_of(self, code):
        """Value of `code` in 0 … 2^k−1: numpy integer arrays and TIR integer expressions alike."""
        if self.kind == "bipolar":
            return code * 2 - 1
        if self.kind == "signed":
            return code - ((code >> (self.bits - 1)) << self.bits)
        return code

    def decode(self, codes: np.ndarray) -> np.ndarray:
        """int64 values of integer `codes`; bits above the k-th are ignored."""
        return self.value_of(np.asarray(codes).astype(np.int64) & self.mask)

    def encode(self, values: np.ndarray) -> np.ndarray:
        """int64 codes in 0 … 2^k−1 of integer `values`, which must lie in the encoding's range.

        Raises ValueError for a value outside the range (or 0 for bipolar).
        """
        values = np.asarray(values).astype(np.int64)
        lo, hi = self.value_range
        if values.size and (values.min() < lo or values.max() > hi):
            raise ValueError(f"values outside {lo}..{hi} cannot be encoded as {self}")
        if self.kind == "bipolar":
            if np.any(values == 0):
                raise ValueError(f"0 cannot be encoded as {self}")
            return (values > 0).astype(np.int64)
        return values & self.mask
