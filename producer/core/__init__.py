"""videoqueue's core: the contract between producer, worker and the HTTP service, and the
storage that holds it.

Names of keys and tasks (names), the job record (records), the request schema (requests),
errors, settings, providers, the outbound URL policy (urls), S3-safe metadata (metadata), the
store of records (store), the durable schedule (schedule) and their Lua (scripts). It imports
no other part of videoqueue: producer/ (the backend's verbs), worker/ and ops/ import it.
"""
