"""asyncd: a SIP server that runs Kamailio routing scripts.

Runs in: every process (package root only).
"""
__version__ = "0.1.0"
