"""Cluster mode: the node as a worker of a LiveKit server over Redis (psrpc).

The bus (redis_bus.py) and the psrpc machines driven on it (rpc.py); the protocol
itself is relay/psrpc."""
