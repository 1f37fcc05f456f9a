"""Offline distillation: the cached top-k teacher store, the save stage, and the objective and
losses that train a student from it."""
