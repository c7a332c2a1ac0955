"""Internals of ``SQLiteSagaStore``: statements, schema, the writer thread, the store."""
