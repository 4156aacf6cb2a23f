"""zaya-vl."""
