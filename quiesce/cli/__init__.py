"""The typer CLI: parse, call one run, render, exit."""
