"""Persistence: the only package that issues SQL. Callers use :class:`ingestlayer.store.store.Store`."""
