"""`promptdistill compare`: teacher and student side by side, in a REPL or for scripts."""
