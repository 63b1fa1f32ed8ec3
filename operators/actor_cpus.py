"""How many CPUs the Ray actor running this code was given (threads for torch / tokenizers / FAISS).

Ray sets OMP_NUM_THREADS to 1 in fractional-CPU actors (docs/notes.md), so stages set their thread
counts explicitly from this instead of trusting the environment.
"""

from __future__ import annotations

import math
import sys


def ray_actor_cpus() -> int | None:
    """CPUs Ray assigned to this actor, rounded up; None outside a Ray actor or when none are assigned."""
    if "ray" not in sys.modules:
        return None
    import ray

    if not ray.is_initialized():
        return None
    context = ray.get_runtime_context()
    if context.get_actor_id() is None:
        return None
    cpus = context.get_assigned_resources().get("CPU", 0.0)
    return max(1, math.ceil(cpus)) if cpus > 0 else None
