"""The service process of a node: CLI, config, the HTTP listener, the ingest fronts.

Everything under relay/service/ runs in the one service process of a node; each
media session's work runs in a worker child (relay/worker/), reached only through
relay/wire.py.
"""
