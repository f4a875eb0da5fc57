"""Reading free-text scan reports: ``Findings`` in, prompts out.

Data flow (each module imports only those before it): ``findings`` (the fixed questions) ->
``lexicon`` (normalising text) -> ``sentences`` (sections, negation, head nouns) -> ``rules`` (the
per-question answerers, ``extract_findings``) -> ``prompts`` (extractors and prompt rendering).
"""
