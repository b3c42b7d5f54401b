"""The contracts between the stages, below all of them (numpy only).

- :mod:`~pipeline_contracts.pull_requests`: the pull-request input columns, one table.
- :mod:`~pipeline_contracts.features`: the feature spec, its inputs and context, the formulas.
- :mod:`~pipeline_contracts.scorer`: the scorer and its file format.
- :mod:`~pipeline_contracts.registry`: model references, aliases, the one scorer download.
- :mod:`~pipeline_contracts.readiness`: what serving's /readyz says and ops reads.
"""
