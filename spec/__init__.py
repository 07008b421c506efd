"""resblock.spec"""
