"""resblock.golden"""
