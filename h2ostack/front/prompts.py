"""The prompt types now live in `h2ostack.prompts`, below both the front and the gateway; this name stays
for code that still imports it from here."""

from h2ostack.prompts import *  # noqa: F403
