"""Maintenance commands: `verify` and `runs`."""

COMMANDS = []
