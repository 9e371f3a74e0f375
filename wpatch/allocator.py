"""Keep freed activation buffers in the process for the next batch instead of handing them back to the kernel.

glibc's malloc serves every buffer above its mmap threshold (32 MiB at most) with a fresh mapping and unmaps it
when freed, so each batch's activations (an encoder block's MLP and attention buffers are tens of MiB) are
page-faulted in anew: millions of minor faults and a large share of a CPU run's time spent in the kernel.
`keep_freed_buffers` serves them from the heap instead and keeps the heap's freed top, so later batches reuse the
same pages. The arithmetic is untouched (same kernels, same buffers' contents). While a run goes on, the process's
resident memory stays near its peak; `give_back_freed_buffers` returns the freed pages when it ends (a notebook's
memory falls again after a run). `WPATCH_KEEP_FREED_BUFFERS=0` in the environment leaves malloc as it is.
"""

import ctypes
import os
import sys

M_TRIM_THRESHOLD, M_MMAP_MAX = -1, -4  # mallopt parameters (malloc.h)
KEPT_BYTES = 2**31 - 1  # trim threshold (an int): the heap's freed top is given back only above 2 GiB
OPT_OUT = "WPATCH_KEEP_FREED_BUFFERS"


def glibc() -> ctypes.CDLL | None:
    """The process's C library where it is glibc's (it has mallopt and malloc_trim); else None."""
    if not sys.platform.startswith("linux"):
        return None
    try:
        libc = ctypes.CDLL("libc.so.6")
        libc.mallopt.argtypes, libc.mallopt.restype = [ctypes.c_int, ctypes.c_int], ctypes.c_int
        libc.malloc_trim.argtypes, libc.malloc_trim.restype = [ctypes.c_size_t], ctypes.c_int
    except (OSError, AttributeError):
        return None
    return libc


def keep_freed_buffers() -> bool:
    """Set glibc's malloc to reuse freed large buffers; False (and nothing changed) where it is not glibc's or
    `WPATCH_KEEP_FREED_BUFFERS=0` says not to."""
    libc = glibc()
    if libc is None or os.environ.get(OPT_OUT, "1") == "0":
        return False
    return bool(libc.mallopt(M_MMAP_MAX, 0)) and bool(libc.mallopt(M_TRIM_THRESHOLD, KEPT_BYTES))


def give_back_freed_buffers() -> bool:
    """Return the heap's freed pages to the kernel (glibc's malloc_trim); True where some were returned."""
    libc = glibc()
    return bool(libc.malloc_trim(0)) if libc is not None else False
