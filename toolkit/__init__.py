"""Notebook-to-production toolkit: steps as a Ploomber DAG, data contracts, layered config,
storage by URL, and runs that are cached, recorded and scaled out.

Rooms: ``config`` (layers, model, provenance), ``data`` (contracts, validated tables,
storage), ``dag`` (the pipeline.yaml glue, Ploomber client, kernels), ``runs`` (records,
cache, runner, backfill, reports), ``scale`` (Dask), ``dev`` (the data scientist's
tools), ``cli``, and ``pricing`` (the step logic). ``project`` finds the project folder.
Importing toolkit changes nothing in the process.
"""

__version__ = "0.1.0"
__all__ = ["__version__"]
