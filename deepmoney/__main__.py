"""`python -m deepmoney` is the same as the `deepmoney` command."""

from deepmoney.cli import main

main()
