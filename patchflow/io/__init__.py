"""Everything that touches storage: the streamed result store (the only Zarr code besides
chip stores), input sources, COG writing and the synthetic demo scene.

=====================  ================================================================
module                 owns
=====================  ================================================================
:mod:`.store`          ``run``/``resume``/``open_result``/``check_store``: Zarr result
                       stores, job records, locks, checksums
:mod:`.chips`          ``write_chips``/``open_chips``: Zarr chip stores
:mod:`.sources`        opening GeoTIFF/COG and Zarr inputs lazily
:mod:`.cog`            writing a Cloud-Optimized GeoTIFF through a staged store
:mod:`.synthetic`      a deterministic lazy red/NIR scene of any size (demo, tests)
=====================  ================================================================
"""
