"""Where chunks run: execution options, the planner, the worker loop, pools, shared memory, Dask."""
