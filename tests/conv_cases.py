"""Shared grids of the kernel tests: conv geometries and encoding pairs."""

from dataclasses import dataclass

import pytest

from tvmbits.ops.encoding import Encoding


@dataclass(frozen=True)
class Conv:
    batch: int
    size: tuple[int, int]  # H, W
    channels: int
    out_channels: int
    kernel: tuple[int, int]
    strides: tuple[int, int]
    padding: tuple[int, int, int, int]  # top, left, bottom, right

    def __str__(self):
        (h, w), (kh, kw), (sh, sw) = self.size, self.kernel, self.strides
        pad = "-".join(map(str, self.padding))
        return f"n{self.batch}_{h}x{w}x{self.channels}_o{self.out_channels}_k{kh}x{kw}_s{sh}{sw}_p{pad}"


def same(size, kernel, strides):
    """TensorFlow "SAME" padding (extra row/column at the bottom/right)."""
    pads = []
    for n, k, s in zip(size, kernel, strides):
        total = max((-(-n // s) - 1) * s + k - n, 0)
        pads.append((total // 2, total - total // 2))
    (top, bottom), (left, right) = pads
    return top, left, bottom, right


CONVS = [
    Conv(1, (5, 5), 1, 3, (1, 1), (1, 1), (0, 0, 0, 0)),
    Conv(3, (6, 7), 33, 4, (3, 3), (1, 1), (1, 1, 1, 1)),
    Conv(1, (7, 6), 70, 5, (3, 3), (2, 2), (0, 1, 2, 0)),
    Conv(1, (9, 8), 32, 2, (5, 5), (3, 3), (2, 2, 2, 2)),
    Conv(3, (6, 5), 5, 3, (7, 1), (2, 1), same((6, 5), (7, 1), (2, 1))),
    Conv(1, (6, 6), 64, 4, (3, 3), (2, 2), same((6, 6), (3, 3), (2, 2))),
    Conv(1, (4, 4), 100, 3, (1, 1), (2, 2), (0, 0, 0, 0)),
    Conv(1, (5, 5), 31, 3, (3, 3), (1, 3), (2, 0, 0, 1)),
]

# (batch, features, out_features)
DENSES = [(1, 1, 3), (3, 33, 4), (2, 100, 5)]

BIPOLAR = Encoding("bipolar", 1)
SMALL = [BIPOLAR, Encoding("unsigned", 1), Encoding("unsigned", 2), Encoding("signed", 2)]


def pairs(encodings):
    return [(a, w) for a in encodings for w in encodings]


def pair_id(pair):
    act, wgt = pair
    return f"{act.kind[0]}{act.bits}x{wgt.kind[0]}{wgt.bits}"


def grid(shapes, pairs):
    """Every (shape, pair) of a kernel test as pytest params `shape, pair`, with ids "shape-pair".
    The default run takes each pair on half of the shapes (rounded up), the halves rotating with
    the pair, so that it holds every pair and every shape (given enough pairs); the rest is marked
    slow."""
    half = -(-len(shapes) // 2)
    assert len(pairs) + half > len(shapes), "too few pairs for every shape to be in the default run"
    return [
        pytest.param(shape, pair, id=f"{shape}-{pair_id(pair)}", marks=() if (j - i) % len(shapes) < half else pytest.mark.slow)
        for j, shape in enumerate(shapes)
        for i, pair in enumerate(pairs)
    ]
