"""The rules of rhaas: projects, nodes, networks, switches, users and who may do what.

Core functions take a database session and the `Caller`, check everything, and change rows; the caller
commits. They know nothing of HTTP, SQL dialects or device vendors (drivers come from the registry).
"""
