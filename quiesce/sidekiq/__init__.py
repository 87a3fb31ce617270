"""Sidekiq's side of the wire: versions, key names, raw rows, the busy-jobs reader. Pure."""
