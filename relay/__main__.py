"""`python -m relay`: the service's CLI (relay/service/cli.py)."""

from relay.service.cli import main

raise SystemExit(main())
