"""Statistics and the report over the experiment history."""
