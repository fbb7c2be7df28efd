"""Deterministic simulation of sealedos (`sealedos sim`): see world.py."""
