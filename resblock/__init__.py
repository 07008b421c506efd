"""resblock: golden data and conformance kit for the ResNet basic block."""
__version__ = "0.1.0"
