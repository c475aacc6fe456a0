"""Batch files: the file store, batch records and tabular formats."""
