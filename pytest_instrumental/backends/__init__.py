"""Backends generate the responses of the models under test: the protocol they follow
(``protocol``), the registry that maps ``--model`` to one (``registry``), and one module per engine
(``transformers``, ``openai``, ``embedded``, ``served``, ``replay``), and activation steering of
local models (``steering``)."""
