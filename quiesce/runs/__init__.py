"""Orchestration: each command's loop over adapters and model."""
