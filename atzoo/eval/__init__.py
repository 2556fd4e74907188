"""atzoo.eval."""
