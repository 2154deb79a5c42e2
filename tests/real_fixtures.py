"""The tests' offline real-scale inputs live in harness.tiny (the GPU check script uses them too)."""
from harness.tiny import build_tiny_model, teach, write_punkt_tab, write_task_data  # noqa: F401
