"""The Relax passes of the compile pipeline (`pipeline.py` lists them in order).

The passes raise tvmbits' errors (`tvmbits.errors`) from inside TVM's pass machinery, which
carries an exception across its C++ boundary by the name of its class: registered here with
tvm-ffi, each comes out of a pass as the class it went in as.
"""

import tvm_ffi

from tvmbits import errors

for _error in (errors.UserError, errors.ModelError, errors.OptionError, errors.TargetError, errors.InputError):
    tvm_ffi.register_error(_error.__name__, _error)
