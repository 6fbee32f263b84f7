"""Device drivers: switches, out-of-band management (BMCs).

A driver is a plain object behind a small abstract class. It declares its settings as a pydantic model;
the core stores them as validated JSON. Drivers translate their library's exceptions at the boundary
(``raise SwitchError(...) from exc``) so callers only ever see `rhaas.errors` classes.
"""
