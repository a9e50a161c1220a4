"""The rounding modes of QONNX's Quant and Trunc, in numpy and as standard ONNX nodes.

Both columns compute the same float32 values (QONNX's `resolve_rounding_mode`):
ROUND / HALF_EVEN → round half to even; CEIL; FLOOR; UP → away from zero;
DOWN → toward zero; HALF_UP → sign(y)·floor(|y| + ½); HALF_DOWN → sign(y)·ceil(|y| − ½).
ONNX `Round` rounds half to even, as numpy does.
"""

import numpy as np

HALF = np.float32(0.5)


def _away(edit, y, inner):
    return edit.emit("Mul", [edit.emit("Sign", [y]), inner])


NUMPY = {
    "ROUND": np.round,
    "HALF_EVEN": np.round,
    "CEIL": np.ceil,
    "FLOOR": np.floor,
    "UP": lambda y: np.sign(y) * np.ceil(np.abs(y)),
    "DOWN": np.fix,
    "HALF_UP": lambda y: np.sign(y) * np.floor(np.abs(y) + HALF),
    "HALF_DOWN": lambda y: np.sign(y) * np.ceil(np.abs(y) - HALF),
}

ONNX = {
    "ROUND": lambda edit, y: edit.emit("Round", [y]),
    "HALF_EVEN": lambda edit, y: edit.emit("Round", [y]),
    "CEIL": lambda edit, y: edit.emit("Ceil", [y]),
    "FLOOR": lambda edit, y: edit.emit("Floor", [y]),
    "UP": lambda edit, y: _away(edit, y, edit.emit("Ceil", [edit.emit("Abs", [y])])),
    "DOWN": lambda edit, y: _away(edit, y, edit.emit("Floor", [edit.emit("Abs", [y])])),
    "HALF_UP": lambda edit, y: _away(
        edit, y, edit.emit("Floor", [edit.emit("Add", [edit.emit("Abs", [y]), edit.const("half", HALF)])])
    ),
    "HALF_DOWN": lambda edit, y: _away(
        edit, y, edit.emit("Ceil", [edit.emit("Sub", [edit.emit("Abs", [y]), edit.const("half", HALF)])])
    ),
}

MODES = tuple(NUMPY)
