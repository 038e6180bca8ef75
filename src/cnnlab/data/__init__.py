"""Datamodules, datasets and transforms."""
