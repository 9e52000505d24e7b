"""`python -m ioc`: the same CLI as the `ioc` command."""

from ioc.cli import main

main()
