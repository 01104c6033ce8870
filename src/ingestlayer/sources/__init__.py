"""Signed webhook ingress: third parties (Stripe, GitHub, any Standard Webhooks sender) POST to us."""
