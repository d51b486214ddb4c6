"""The same run on a Ray cluster (`gigabatch run --ray local|auto|ADDRESS`).

    driver (validate, checkpoint, pack, write parts)  --batches-->  BatchWorker actors
        dispatch: the budget, the cache and journal, the event log, for every batch
    BatchWorker: kind.send with slots leased from  -->  the one named Coordinator actor
        replies: rows, answers to keep, attempt records (`attempts`)
    Coordinator: the account's AdaptiveLimiter, its run-wide pause, outages, the OAuth token

`coordinator`, `leases`, `attempts` and `dispatch` import no Ray, so they are tested in one
process; `worker` and `driver` are the Ray side. Ray itself is the optional extra
`gigabatch[ray]`.
"""
