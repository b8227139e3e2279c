--- KEYS: ledger tenants totals
--- ARGV: tenant reserve charge provider
--- uses: redis_now ledger
-- A job's money moves (producer/core/ledger.py): queued in the transaction that writes the
-- job's change, so that it moves exactly when the change is written, once.
ledger_move(KEY.ledger, KEY.tenants, KEY.totals, ARG.tenant, ARG.reserve, ARG.charge,
            ARG.provider)
return 1
