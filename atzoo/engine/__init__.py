"""atzoo.engine."""
