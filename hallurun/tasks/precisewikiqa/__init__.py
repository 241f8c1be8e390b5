"""The precisewikiqa task."""
