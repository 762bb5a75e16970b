"""The frozen base and its adapters."""
