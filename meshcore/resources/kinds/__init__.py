"""One module per resource kind; each defines ``KIND: KindSpec`` (registered in :mod:`..registry`)."""
