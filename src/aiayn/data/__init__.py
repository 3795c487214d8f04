"""Reading the user's text, batching it, and the built-in generated tasks."""
