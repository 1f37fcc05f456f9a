"""Training: the trainer loop and its hooks, objectives, losses, schedules, metrics,
checkpoints and the distributed set-up."""
