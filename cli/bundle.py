"""`registry export`, `import` and `predict`: bundles that serve every task without the database."""

COMMANDS = []
