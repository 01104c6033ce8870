"""Outbound webhook delivery."""
