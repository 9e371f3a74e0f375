"""Keep freed activation buffers in the process for the next batch instead of handing them back to the kernel.

glibc's malloc serves every buffer above its mmap threshold (32 MiB at most) with a fresh mapping and unmaps it
when freed, so each batch's activations (an encoder block's MLP and attention buffers are tens of MiB) are
page-faulted in anew: millions of minor faults and a large share of a CPU run's time spent in the kernel.
`keep_freed_buffers` serves them from the heap instead and keeps the heap's freed top, so later batches reuse the
same pages. The arithmetic is untouched (same kernels, same buffers' contents); the process's resident memory
stays near its peak instead of falling between batches.
"""

import ctypes
import sys

M_TRIM_THRESHOLD, M_MMAP_MAX = -1, -4  # mallopt parameters (malloc.h)
KEPT_BYTES = 2**31 - 1  # trim threshold (an int): the heap's freed top is given back only above 2 GiB


def keep_freed_buffers() -> bool:
    """Set glibc's malloc to reuse freed large buffers; False (and nothing changed) where it is not glibc's."""
    if not sys.platform.startswith("linux"):
        return False
    try:
        mallopt = ctypes.CDLL("libc.so.6").mallopt
    except (OSError, AttributeError):
        return False
    mallopt.argtypes, mallopt.restype = [ctypes.c_int, ctypes.c_int], ctypes.c_int
    return bool(mallopt(M_MMAP_MAX, 0)) and bool(mallopt(M_TRIM_THRESHOLD, KEPT_BYTES))
