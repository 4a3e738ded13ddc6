"""Everything that touches storage: the streamed result store, chip stores, input sources,
COG writing and the synthetic demo scene (nothing outside this package imports zarr).

=====================  ================================================================
module                 owns
=====================  ================================================================
:mod:`.store`          ``run``/``resume``/``open_result``/``check_store``: Zarr result
                       stores, job records, locks, checksums
:mod:`.report`         :class:`RunReport`, what a run did (light: no dask or zarr)
:mod:`.chips`          ``write_chips``/``open_chips``: Zarr chip stores
:mod:`.sources`        opening GeoTIFF/COG and Zarr inputs lazily
:mod:`.cog`            writing a Cloud-Optimized GeoTIFF through a staged store
:mod:`.synthetic`      a deterministic lazy red/NIR scene of any size (demo, tests)
=====================  ================================================================
"""
