"""atzoo.attacks."""
