"""Adding a task: the plan, the training loop, transfer from earlier tasks, evaluation."""
