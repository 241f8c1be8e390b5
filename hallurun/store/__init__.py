"""What hallurun reads and writes on disk: the dataset, and the run folder (results, failures, events, the lock,
the manifest), every write durable. Knows nothing of servers or HTTP."""
