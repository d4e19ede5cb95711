"""How radixlm's processes wait at OpenMP barriers: spin briefly, then sleep.

torch's CPU kernels run on libgomp threads that meet at a barrier after every parallel region. Two
failure modes, both measured on the 2-core AMD EPYC with SmolLM2:
  * libgomp's default (spin up to 300,000 times) collapses when another process takes a core: a
    thread spins for a descheduled partner (load ~9: 0.8 tok/s decode, against 7.0 when sleeping);
  * sleeping at once (OMP_WAIT_POLICY=PASSIVE) pays a wake-up per region, and a batch-1 decode step
    runs a few hundred small regions: int8 decode 36 tok/s on a quiet machine, against 101 spinning.
A bounded spin of 30,000 keeps both: 101 tok/s quiet, and PASSIVE's rate (10-29 tok/s against 17-19;
the spinning default 3.5-11) with two engines and four busy processes on the two cores.

Settings are read when torch loads libgomp, so this runs before anything imports torch.
"""

from __future__ import annotations

import os

OPENMP_SPIN_COUNT = "30000"
# Variables with which a user chooses the wait policy; when any is set, radixlm leaves the choice alone.
USER_WAIT_SETTINGS = ("OMP_WAIT_POLICY", "GOMP_SPINCOUNT")


def apply_openmp_defaults() -> None:
    """Set a bounded OpenMP spin for this process and its children, unless the user chose a policy."""
    if not any(name in os.environ for name in USER_WAIT_SETTINGS):
        os.environ["GOMP_SPINCOUNT"] = OPENMP_SPIN_COUNT
