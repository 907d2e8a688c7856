"""`python -m skipganomaly` runs the command line."""

from .cli import run

run()
