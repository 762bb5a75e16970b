"""Task data: value rules, readers, column inference, splits, tokenising."""
