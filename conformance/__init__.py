"""resblock.conformance"""
