"""The session worker: the child process that runs one ingest session.

Everything under relay/worker/ runs in that child, never in the service process;
it talks to the service only through relay/wire.py over its stdin and stdout.
"""
