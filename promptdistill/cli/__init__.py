"""The `promptdistill` command line: thin typer commands over the library."""
