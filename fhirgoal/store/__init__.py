"""MongoDB storage: current versions, history, indexes, the embedded server."""
