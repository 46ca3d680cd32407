"""Judges label each response with one of the four decisions: the protocol they follow
(``protocol``), the paper's rubric and strict answer parsing (``rubric``), the registry that maps
``--judge`` to one (``registry``), and one module per judge (``openai``, ``transformers``,
``offline``, ``replay``)."""
