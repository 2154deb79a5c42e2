"""Reports rebuilt from MLflow alone: tidy frames, Pareto fronts, figures, tables and a self-contained page."""
