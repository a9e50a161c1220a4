"""The sliding window of an NHWC conv2d: output size and which input pixel each tap reads.

Padding is explicit `(top, left, bottom, right)`, any non-negative values; padded taps are not
read at all, so they contribute 0 to the sum whatever the operands' encoding (`tap`), or read
an input padded with zeros whose contribution the kernel knows (`padded`, `border_class`).

Border classes: along one axis, the outputs whose taps all lie inside the input (the interior,
a contiguous range `interior`) form one class, and every output before or after it is a class
of its own; all outputs of a class have the same taps inside the input. A per-class table
(`class_count` rows, `class_member` names one output of each) then holds whatever depends only
on which taps are inside, and an output reads it at `border_class`.
"""

from dataclasses import dataclass

from tvm import tirx
from tvm.ir import Expr



@dataclass(frozen=True)
class Window:
    in_size: tuple[int, int]
    kernel: tuple[int, int]
    strides: tuple[int, int]
    padding: tuple[int, int, int, int]

    def __post_init__(self):
        if len(self.strides) != 2 or min(self.strides) < 1:
            raise ValueError(f"conv2d strides {self.strides}: need two positive integers")
        if len(self.padding) != 4 or min(self.padding) < 0:
            raise ValueError(f"conv2d padding {self.padding}: need (top, left, bottom, right) ≥ 0")
        if min(self.out_size) < 1:
            raise ValueError(f"conv2d kernel {self.kernel} is larger than its padded input")

    @classmethod
    def of(cls, in_size, kernel, strides, padding) -> "Window":
        """A window from sequences of ints or TVM IntImms (as Relax conv2d attributes hold them)."""
        return cls(*(tuple(int(v) for v in arg) for arg in (in_size, kernel, strides, padding)))

    @property
    def out_size(self) -> tuple[int, int]:
        (height, width), (kh, kw), (sh, sw) = self.in_size, self.kernel, self.strides
        top, left, bottom, right = self.padding
        return (height + top + bottom - kh) // sh + 1, (width + left + right - kw) // sw + 1

    def taps_inside(self, y, x) -> Expr | int:
        """How many of the kernel's taps at output (y, x) read a pixel inside the input."""
        top, left, bottom, right = self.padding
        if not any(self.padding):
            return self.kernel[0] * self.kernel[1]
        return self._inside_count(y, self.strides[0], top, self.kernel[0], self.in_size[0]) * self._inside_count(
            x, self.strides[1], left, self.kernel[1], self.in_size[1]
        )

    @staticmethod
    def _inside_count(out_index, stride, before, kernel, size):
        """Taps k in 0..kernel−1 with 0 ≤ out_index·stride + k − before < size."""
        start = out_index * stride - before
        first = tirx.max(0, -start)
        last = tirx.min(kernel, size - start)
        return tirx.max(last - first, 0).astype("int32")

    def padded(self) -> "Window":
        """The same window over the input padded explicitly: the same outputs, no padding."""
        (height, width), (top, left, bottom, right) = self.in_size, self.padding
        return Window((height + top + bottom, width + left + right), self.kernel, self.strides, (0, 0, 0, 0))

    def interior(self, axis: int) -> tuple[int, int]:
        """[first, stop) of the outputs along `axis` (0 rows, 1 columns) whose taps all lie inside
        the input; (size, size) when there is none."""
        size, out = self.in_size[axis], self.out_size[axis]
        stride, kernel, before = self.strides[axis], self.kernel[axis], self.padding[axis]
        inside = [i for i in range(out) if i * stride - before >= 0 and i * stride - before + kernel <= size]
        return (inside[0], inside[-1] + 1) if inside else (out, out)

    def class_count(self, axis: int) -> int:
        first, stop = self.interior(axis)
        if first == stop:  # no interior: every output is a class of its own
            return self.out_size[axis]
        return first + 1 + self.out_size[axis] - stop

    def border_class(self, out_index, axis: int) -> Expr:
        """The border class of output `out_index` along `axis`: the outputs before the interior
        are 0, 1, ..., the interior is one class, the outputs after it follow."""
        first, stop = self.interior(axis)
        return tirx.min(out_index, first) + tirx.max(out_index - stop + 1, 0)

    def class_member(self, border_class, axis: int) -> Expr:
        """An output of `border_class` along `axis` (the inverse of `border_class` on the borders,
        the interior's first output for the interior)."""
        first, stop = self.interior(axis)
        return border_class + (border_class > first).astype("int32") * (stop - first - 1)

    def tap_inside(self, out_index, tap, axis: int) -> Expr:
        """Whether output `out_index` reads inside the input at `tap` along `axis`."""
        index = out_index * self.strides[axis] + tap - self.padding[axis]
        return tirx.all(index >= 0, index < self.in_size[axis])

    def tap(self, y, x, ky, kx) -> tuple[Expr, Expr, Expr | None]:
        """Input row and column read by output (y, x) at kernel tap (ky, kx), and the condition
        that they lie inside the input (None when no padding can put them outside)."""
        top, left, bottom, right = self.padding
        row = y * self.strides[0] + ky - top
        col = x * self.strides[1] + kx - left
        height, width = self.in_size
        conditions = []
        if top:
            conditions.append(row >= 0)
        if bottom:
            conditions.append(row < height)
        if left:
            conditions.append(col >= 0)
        if right:
            conditions.append(col < width)
        return row, col, tirx.all(*conditions) if conditions else None
