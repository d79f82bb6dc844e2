"""`python -m services.migrations "add runs.note"`: write the next revision by autogenerate.

It compares services/models.py with a scratch SQLite database upgraded to head, so no server is
needed. Read what it wrote before committing it: PostgreSQL-only types, data to move, and
`batch_alter_table` blocks (SQLite's way to alter a table) are yours to check.
"""

from __future__ import annotations

import sys
import tempfile
from pathlib import Path

import sqlalchemy as sa
from alembic import command

from services.migrations import alembic_config, head, upgrade


def main(argv: list[str] | None = None) -> int:
    message = " ".join(sys.argv[1:] if argv is None else argv).strip()
    if not message:
        sys.stderr.write('usage: python -m services.migrations "what the revision changes"\n')
        return 2
    with tempfile.TemporaryDirectory() as tmp:
        engine = sa.create_engine(f"sqlite:///{Path(tmp) / 'scratch.db'}")
        try:
            upgrade(engine)
            with engine.begin() as conn:
                script = command.revision(
                    alembic_config(conn),
                    message=message,
                    autogenerate=True,
                    rev_id=f"{int(head()) + 1:04d}",
                )
        finally:
            engine.dispose()
    sys.stderr.write(f"wrote {Path(script.path).name}: read it, then run the tests\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
