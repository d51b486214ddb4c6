"""The same run on a Ray cluster (`gigabatch run --ray local|auto|ADDRESS`).

    driver (validate, checkpoint, pack, write parts)  --batches-->  BatchWorker actors
    BatchWorker: kind.send with slots leased from  -->  the one named Coordinator actor
    Coordinator: the account's AdaptiveLimiter, its run-wide pause and the OAuth token

`coordinator` and `leases` import no Ray, so they are tested in one process; `worker` and
`driver` are the Ray side. Ray itself is the optional extra `gigabatch[ray]`.
"""
