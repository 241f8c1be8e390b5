"""The mixedentities task."""
