"""The end-to-end files (tests/toolchain) run first: `make test` spreads files over two processes, and the
long files started last would leave one process working alone at the end."""


def pytest_collection_modifyitems(config, items):
    items.sort(key=lambda item: "tests/toolchain/" not in item.nodeid)  # stable: file order kept otherwise
