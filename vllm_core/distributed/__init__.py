"""Distributed execution: process groups, the parallel context handed to models, the platform
communicator, and the shared-memory broadcast ring of the multiprocess executor."""
