"""Operations: the sandbox provider, the local stack, and the `videoqueue` command line."""
