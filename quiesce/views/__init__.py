"""Text and JSON renderings of the model. Pure: model and text only."""
