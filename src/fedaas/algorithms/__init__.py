"""Pure math of federated learning: no I/O, no network, no clock."""
