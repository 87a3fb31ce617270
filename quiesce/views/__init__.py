"""Text and JSON renderings of the model. Pure: model and text only."""

JSON_VERSION = 1
"""The ``version`` of every ``--json`` document; raised when a field changes meaning."""
