"""Persistence. :mod:`ingestlayer.store.store` is the only module that issues SQL."""
