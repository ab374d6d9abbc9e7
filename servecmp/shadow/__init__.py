"""servecmp package."""
