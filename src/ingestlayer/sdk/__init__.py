"""Public SDK surface for ingestlayer users; webhook verification is in :mod:`ingestlayer.sdk.webhooks`."""
