"""Host tools: the CLI, the supervisor, observers, benchmarks, chaos and load generators.
Untrusted by the kernel; may import every other package."""
