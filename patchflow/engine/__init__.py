"""The engine: prepare a job, build its dask graph, run the block kernels, merge chips.

=====================  ================================================================
module                 owns
=====================  ================================================================
:mod:`.prepare`        options → :class:`~patchflow.engine.prepare.Prepared` job
:mod:`.nodata`         every validity and nodata rule (input, work dtype, output)
:mod:`.graph`          the only code that builds dask graphs (apply, samplers, zonal,
                       points, vector outputs)
:mod:`.kernels`        picklable block functions of ``apply``: read, run, weight, stitch
:mod:`.chip_kernels`   picklable block functions of the sampler graphs (incl. zonal, h3)
:mod:`.vectors`        vector outputs of chips: kernel, ownership rules, NMS, merge
:mod:`.aggregate`      the merges: overlap-add, mean, max, min, vote, soft vote, centre
:mod:`.rasters`        lazy (dask) rasters reduced block by block for the samplers
:mod:`.timing`         optional per-phase timers inside the kernels (profiling)
=====================  ================================================================

Data path: input → :mod:`patchflow.plan` (grid, blocks) → :mod:`.graph` → :mod:`.kernels`
→ :mod:`.aggregate` → a lazy array (or the store, :mod:`patchflow.io.store`).
"""
