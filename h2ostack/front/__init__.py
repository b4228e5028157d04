"""The chat fronts: the built-in Gradio compare grid, its clients and prompt types."""
