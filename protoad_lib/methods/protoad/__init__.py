"""ProtoAD: prototypes of normal patch features (FINCH) and the training-free network built from them."""

from .network import ProtoAD, ProtoADConfig, PrototypeHead, nearest_prototype_distance, prototype_usage

__all__ = ["ProtoAD", "ProtoADConfig", "PrototypeHead", "nearest_prototype_distance", "prototype_usage"]
