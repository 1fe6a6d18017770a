"""DICOMweb (PS3.18): QIDO-RS search, WADO-RS / WADO-URI retrieve, STOW-RS store.

The logic lives here; :mod:`remote_dx.api.routers.dicomweb` only maps HTTP onto it. Searches are
answered from the index alone (:mod:`.qido`); retrieves read the stored objects (:mod:`.wado`);
metadata is precomputed per series when a study is processed (:mod:`.metadata`); stores go through
the one filing door, :func:`remote_dx.ingest.instance.file_instance` (:mod:`.stow`). Every query
is scoped with :func:`remote_dx.worklist.service.visibility`, the worklist's rule (:mod:`.access`).
"""
