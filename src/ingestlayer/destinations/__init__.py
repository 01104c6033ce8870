"""Destinations: one module each, behind the one-method :class:`~.base.Destination` protocol."""
