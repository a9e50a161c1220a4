"""tvmbits: compile binarized and low-bit networks to bit-serial and sub-byte kernels."""

__version__ = "0.1.0"
