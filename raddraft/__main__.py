"""``python -m raddraft`` is the ``raddraft`` command."""

from raddraft.cli import main

if __name__ == "__main__":
    main()
