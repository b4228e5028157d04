"""Runtimes: how a planned service is started, found again, observed and stopped."""
