"""Notebook-to-production toolkit: layered config, data contracts, storage by URL, runs.

Modules, one concern each: ``config`` (layers, model, provenance), ``schemas`` (contracts),
``io`` (validated reads and writes), ``storage`` (the fsspec root), ``pipeline`` (glue to
``pipeline.yaml``), ``runner`` (builds), and the step logic: ``transform``,
``underperformers``, ``forecasting``, ``optimizer``, ``delivery``, ``plots``, ``demo_data``.
"""

import os

# No telemetry from Ploomber, however toolkit is imported (set before Ploomber loads).
os.environ.setdefault("PLOOMBER_STATS_ENABLED", "false")
os.environ.setdefault("PLOOMBER_VERSION_CHECK_DISABLED", "1")

# One BLAS thread in every step kernel (notebooks import toolkit before numpy): the
# forecasts' float sums then do not depend on the thread count, so a step gives the same
# numbers in this process, on a Dask worker (which pins one thread) or anywhere else.
for _var in ("OPENBLAS_NUM_THREADS", "OMP_NUM_THREADS", "MKL_NUM_THREADS"):
    os.environ[_var] = "1"

__version__ = "0.1.0"
__all__ = ["__version__"]
