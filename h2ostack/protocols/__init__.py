"""The clients of the wire protocols the backends speak, below everything that talks to a backend
(the gateway, the front's panes, `check`, readiness)."""
