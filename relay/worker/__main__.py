"""`python -m relay.worker`: one session worker (main.py)."""

from relay.worker.main import main

raise SystemExit(main())
