"""atzoo.data."""
