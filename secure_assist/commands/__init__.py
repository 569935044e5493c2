"""Subcommands of the `secure-assist` CLI, one module each (see `secure_assist.cli.COMMANDS`)."""
