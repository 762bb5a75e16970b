"""`python -m registry.cli` runs the registry command."""

from registry.cli.main import main

main()
