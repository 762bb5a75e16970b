"""What the registry holds and answers: queries, the task lifecycle, runs, registry-wide checks."""
