"""Predicting: the predictor, the task sources a server follows, the HTTP app."""
