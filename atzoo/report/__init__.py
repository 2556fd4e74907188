"""atzoo.report."""
