"""What every stage shares: configuration, errors, file I/O, the run directory."""
