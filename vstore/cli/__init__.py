"""The ``vstore`` command. One module per command; ``main`` holds the frame: argument
parsing, logging set-up, and the one place where errors become exit codes."""
