"""Internals of ``PostgresSagaStore``: SQL, row decoding, error mapping, the store."""
