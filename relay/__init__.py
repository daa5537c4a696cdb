"""The running service, by process.

* relay/service/: the service process of a node (one per node): CLI, config, the
  HTTP listener (http/), the ingest fronts and the session lifetime (ingest/).
* relay/worker/: the session worker, a child process per live session: decode,
  encode, publish into the room, and the inputs a worker reads itself (URL, WHIP).
* relay/wire.py: the messages between the two, the only module both import.
"""
