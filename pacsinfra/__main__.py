"""``python -m pacsinfra``: the same command line as the ``pacsinfra`` script."""

from pacsinfra.cli import main

if __name__ == "__main__":
    main()
