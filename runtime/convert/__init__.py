"""Checkpoint layouts and formats: converting parameter trees between layouts and sources."""
