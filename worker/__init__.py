"""Ossa service: DICOM listener, spool, study assembly, job queue, dispatch and CLI."""
