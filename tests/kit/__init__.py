"""Helpers the tests share: tiny projects and bundles, a Hub of our own, Pythons, fault tools, probes."""
