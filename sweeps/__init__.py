"""Optuna sweeps over each method's declared hyper-parameters, every trial a nested MLflow run."""
