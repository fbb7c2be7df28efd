"""The wire: the protocol every sealedos component speaks, the one server skeleton, the one
blocking client and the socket recipes.  Imports nothing else from the project."""
