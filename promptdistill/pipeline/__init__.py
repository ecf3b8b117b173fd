"""`promptdistill run`: every stage in order, resumable; and `promptdistill runs`."""
