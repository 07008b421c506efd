"""resblock.generator"""
