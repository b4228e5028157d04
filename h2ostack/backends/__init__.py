"""One module per service kind; each owns its flags, readiness probes and prompt handling."""
