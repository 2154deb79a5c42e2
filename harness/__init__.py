"""The engine: configuration, model loading, sampling, the training loop, evaluation, metrics and tracking."""
