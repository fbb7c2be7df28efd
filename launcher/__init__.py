"""The trusted launcher: starts every sealed process and service, and is the only source of
their identities (part of the trusted base, with kernel_daemon and wire)."""
