"""The ``retrieval benchmark`` quality report: suites of systems run on local data, written as JSON, Markdown and plots."""
