"""`registry ui`: a read-only web dashboard of tasks, versions, score histories and the task matrix.

Pages are plain HTML rendered on the server (Jinja2, every value autoescaped) with charts as inline SVG: no
JavaScript, nothing fetched from elsewhere. They use registry.catalog's read queries on a connection that the
database itself keeps read-only; neither torch nor a model is imported.
"""
