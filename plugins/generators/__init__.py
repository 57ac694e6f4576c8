"""Built-in medbench plugins."""
