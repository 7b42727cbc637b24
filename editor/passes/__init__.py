"""Running the model for the editor: padded forward passes, generation, token rows of prompts."""
