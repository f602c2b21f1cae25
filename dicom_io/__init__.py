"""DICOM in and out: pixel normalization, Structured Report building, senders."""
