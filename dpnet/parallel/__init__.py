"""Machinery shared by the engines: wire protocol, ZeroMQ transport, shared memory, process monitoring.

Import direction: the math core never imports this package; ``protocol`` imports neither
zmq nor the math (docs/ARCHITECTURE.md, "Layers").
"""
