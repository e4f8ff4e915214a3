"""The shapes pack's tooling, apart from what the service loads: the world generator, training,
CLEVR-style questions (program trees, question generation, a reference executor), CLEVR import, the
benchmark, and the CLI commands that expose them (found through the ``nsx.commands`` entry point).

Nothing here is imported by ``modules.shapes:pack``; tools reach the service only through the public
API of ``modules`` (and, to run programs, the ``Runner`` that ``nsx`` hands their commands).
"""
