"""How many threads the numeric libraries of one process use: torch's intra-op pool and the BLAS
under numpy (OpenBLAS or MKL, through threadpoolctl).

Both matter when serving: numpy computes the OOD distances of every batch, and an idle OpenBLAS
worker spin-waits for the next call. Measured with `potstill serve` on the CLINC150 student, 2
cores, 64 clients, torch at 1 thread: numpy's OpenBLAS at its default of 2 threads kept one
worker thread spinning at 0.85 of a core (found with gdb in `blas_thread_server`), taken from the
event loop and the model.
"""

from __future__ import annotations


def limit_threads(n: int | None) -> None:
    """Torch's intra-op threads and the BLAS pools to `n` for the whole process; None: leave
    both at their defaults."""
    if not n:
        return
    import torch
    from threadpoolctl import threadpool_limits

    torch.set_num_threads(n)
    threadpool_limits(limits=n, user_api="blas")
