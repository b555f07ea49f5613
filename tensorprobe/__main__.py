"""`python -m tensorprobe`: the command line."""

from tensorprobe.cli import main

main()
