"""The ``crashsearch`` commands: one module per command (history.py holds the history store's).

Each module offers ``add_arguments(parser)`` (its flags, defaults and help) and ``run(args)`` (the
handler: calls the flow or library that does the work, prints the result, returns the exit code).
flows/cli.py lists them in its table and wraps every run in the one error and signal handler.
At the top a command module imports only what parsing needs (no torch, Prefect or pandas), so
``crashsearch --help`` and a mistyped flag answer at once; ``run`` imports the work when it runs.
"""
