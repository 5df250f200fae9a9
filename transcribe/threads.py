"""Keep numpy's BLAS from spinning cores that inference needs.

numpy's OpenBLAS starts one thread per core, and after each call its idle threads spin for a while
before they sleep. The only BLAS work here is tiny (faster-whisper's mel filterbank, one small
matrix product per decode; the Silero VAD's products, a few per 250 ms chunk), yet on the 2-core
box the spinning cost 0.18 CPU-seconds per second of streamed audio, a third of the server's CPU,
with no latency gained (bench/latency.py, ``BLAS_THREADS`` 1 against 0). CTranslate2 keeps its own
thread pool and is not affected.
"""

from __future__ import annotations

import logging
import os

logger = logging.getLogger(__name__)

# Set in the environment, these are the operator's choice: left alone.
THREAD_ENVIRONMENT = ("OPENBLAS_NUM_THREADS", "OMP_NUM_THREADS", "MKL_NUM_THREADS")


def limit_blas_threads(threads: int) -> bool:
    """Cap the BLAS libraries loaded in this process at ``threads`` (0: leave them); True when done."""
    if threads <= 0 or any(name in os.environ for name in THREAD_ENVIRONMENT):
        return False
    import numpy  # noqa: F401  (loads the BLAS that threadpoolctl then finds)
    from threadpoolctl import threadpool_limits

    # Called once, not as a context manager: the limit stays. numpy's OpenBLAS (pthreads build) has
    # one pool for the process, so the cap set here also holds on the inference threads.
    threadpool_limits(limits=threads, user_api="blas")
    logger.debug("BLAS limited to %d thread(s)", threads)
    return True
