"""The `servecmp` command line: one module per command, thin wrappers over importable functions.

`main` builds the app and turns every `servecmp.errors.ServecmpError` into one line and an exit
code; `common` holds the options shared by several commands, so one concept has one flag.
Command modules import their heavy dependencies inside the command body, so `--help` is fast.
"""
