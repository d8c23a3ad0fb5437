"""ProtoAD replication: a training-free prototype network for image anomaly detection."""

__version__ = "0.1.0"
