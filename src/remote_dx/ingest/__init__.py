"""Ingest: everything that brings instances into the hub (DICOM receiver, uploads) and files
them in object storage and the index."""
