"""The longwiki task."""
