"""The tiny models the tests serve, built offline with the libraries' own classes (no weights can be downloaded here).

One module per family builds a model into a directory (`colbert`, `sparse`, `bge_m3`, `jina_v3`, `jina`,
`reranker`, `clip`); `fixtures` builds each once per test session and says that a test using one is at least of
the `app` tier (tests/tiers.py). A test that changes a model copies it first (`shutil.copytree`).
"""
