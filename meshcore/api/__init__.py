"""Wire contracts shared by both sides of meshcore's HTTP APIs (request and response dataclasses).

Import the module of the API you need (``meshcore.api.agent``); this package imports nothing itself,
so a contract module stays light for the CLI and the agent.
"""
