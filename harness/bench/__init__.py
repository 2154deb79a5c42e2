"""Speed and memory measurements of the engine (runnable modules: `python -m harness.bench.<name>`)."""
