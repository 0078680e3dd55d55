"""The campaign engine: small parts over one context (``setup``, ``ledger``, ``proposers``,
``recorder``, ``stopping``, ``context``), two schedulers (``turns``, ``pipeline``), put together
by ``engine.Campaign``; one config (``config``). Importing this package is light; the engine
modules import torch-free code only until they train. See docs/engine.md."""
