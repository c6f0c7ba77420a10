"""Storage: every Redis key and every SQL statement lives in this package."""
