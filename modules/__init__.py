"""Modules: the Module interface, value types, packs and the pool that keeps models loaded."""
