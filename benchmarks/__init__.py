"""Worlds and tasks: the embedded `toy` world's generators, verifiers, teacher labels and base recipe."""
