"""Process settings radixlm makes before torch loads: how OpenMP threads wait, and huge pages.

OpenMP: spin briefly, then sleep. torch's CPU kernels run on libgomp threads that meet at a barrier
after every parallel region. Measured on the 2-core AMD EPYC with SmolLM2 (engine served over ZeroMQ
unless noted):
  * libgomp's default (spin up to 300,000 times) collapses when another process takes a core: a
    thread spins for a descheduled partner (load ~9: 0.8 tok/s decode, against 7.0 when sleeping);
  * sleeping at once (OMP_WAIT_POLICY=PASSIVE) pays a wake-up per region, and a batch-1 decode step
    runs a few hundred small regions: int8 decode 31 tok/s on a quiet machine, against ~100 spinning;
  * a spin of 30,000 keeps the quiet speed but loses to PASSIVE with one busy process beside the
    engine (fp32 batch-1 7.5 tok/s against 20.3, 8 concurrent 14.1 against 44.0);
  * a spin of 1,000 keeps both: quiet int8 100 tok/s, and with one busy process fp32 20.2 and 42.5.
    (Two engines and four busy processes on the two cores: 9.5-13.8 tok/s int8, PASSIVE 16-19.)

Huge pages: with `THP_MEM_ALLOC_ENABLE=1`, torch asks the kernel for transparent huge pages for its
large tensors (weights, the KV pool), so streaming them takes fewer TLB misses. Same CPU, 2 threads:
summing a 256 MiB tensor 31.4 -> 34.6 GB/s; q4 batch-1 decode 174-209 -> 205-224 tok/s.

Settings are read when torch loads libgomp and at its first allocation, so this runs before anything
imports torch.
"""

from __future__ import annotations

import os

OPENMP_SPIN_COUNT = "1000"
# Variables with which a user chooses the wait policy; when any is set, radixlm leaves the choice alone.
USER_WAIT_SETTINGS = ("OMP_WAIT_POLICY", "GOMP_SPINCOUNT")


def apply_torch_defaults() -> None:
    """Set a bounded OpenMP spin (unless the user chose a wait policy) and huge pages for large tensors
    (unless the user set `THP_MEM_ALLOC_ENABLE`), for this process and its children."""
    if not any(name in os.environ for name in USER_WAIT_SETTINGS):
        os.environ["GOMP_SPINCOUNT"] = OPENMP_SPIN_COUNT
    os.environ.setdefault("THP_MEM_ALLOC_ENABLE", "1")
