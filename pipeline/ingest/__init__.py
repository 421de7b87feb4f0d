"""Scheduled ingestion, pass by pass: leases on claims, the state of pending groups, one pass.

- :mod:`pipeline.ingest.lease`: who holds a claim folder, and returning the claims of dead passes.
- :mod:`pipeline.ingest.state`: which groups are done, failing (with attempts and error), given up,
  and which scenes wait for a partner; shared by overlapping passes under a file lock.
- :mod:`pipeline.ingest.preflight`: refuse a configuration that would fail every group, before claiming.
- :mod:`pipeline.ingest.ingest_pass`: one pass (recover, claim, plan, run each group, archive, record).

Claiming, fingerprints, the registry and the archive live in :mod:`pipeline.prepare.inbox`.
"""
