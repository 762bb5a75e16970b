"""Bundles: the manifest, the archive safety checks, verify, export, import."""
