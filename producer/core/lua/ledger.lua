-- The ledger's bookkeeping (producer/core/ledger.py owns its keys), for the scripts that
-- reserve money with the job that needs it (create, release_batch) or move it when a job
-- ends (ledger_move). Amounts are whole micro-dollars, so that sums stay exact. Uses `now`
-- (redis_now): the UTC calendar day and month of a charge are Redis's, whichever host asks.

-- Today's UTC day ("2026-12-06") and month ("2026-12"): days since the epoch to the civil
-- calendar (H. Hinnant's days_from_civil, inverted); Redis's Lua has no os.date.
local function ledger_dates()
  local z = math.floor(now / 86400) + 719468
  local era = math.floor(z / 146097)
  local doe = z - era * 146097
  local yoe = math.floor((doe - math.floor(doe / 1460) + math.floor(doe / 36524)
                          - math.floor(doe / 146096)) / 365)
  local doy = doe - (365 * yoe + math.floor(yoe / 4) - math.floor(yoe / 100))
  local mp = math.floor((5 * doy + 2) / 153)
  local d = doy - math.floor((153 * mp + 2) / 5) + 1
  local m = mp < 10 and mp + 3 or mp - 9
  local y = yoe + era * 400 + (m <= 2 and 1 or 0)
  return string.format('%04d-%02d-%02d', y, m, d), string.format('%04d-%02d', y, m)
end

-- Why the tenant (its ledger and policy hashes) may not reserve `amount` more micro-dollars
-- (`priced`: false when some provider of the job has no price for it), as
-- {reason, budget, spent in its period, reserved, period}; nil when it may. A tenant without
-- a budget may always.
local function ledger_refusal(ledger, policy, amount, priced)
  local budget = redis.call('HGET', policy, 'budget_usd')
  if not budget or budget == '' then return nil end
  local period = redis.call('HGET', policy, 'budget_period')
  if not period or period == '' then period = 'total' end
  local day, month = ledger_dates()
  local field = 'charged'
  if period == 'day' then field = 'd:' .. day elseif period == 'month' then field = 'm:' .. month end
  local spent = tonumber(redis.call('HGET', ledger, field) or '0')
  local reserved = tonumber(redis.call('HGET', ledger, 'reserved') or '0')
  local limit = math.floor(tonumber(budget) * 1000000 + 0.5)
  if not priced then return {'unpriced', limit, spent, reserved, period} end
  if spent + reserved + amount > limit then return {'budget', limit, spent, reserved, period} end
  return nil
end

-- Move money: `reserve` more held (negative: released), `charge` more charged at `provider`
-- (negative: a refund), each a whole number of micro-dollars.
local function ledger_move(ledger, tenants, totals, tenant, reserve, charge, provider)
  reserve, charge = tonumber(reserve), tonumber(charge)
  if reserve ~= 0 then
    local amount = string.format('%d', reserve)
    redis.call('HINCRBY', ledger, 'reserved', amount)
    redis.call('HINCRBY', totals, 'reserved', amount)
  end
  redis.call('ZINCRBY', tenants, charge, tenant)
  if charge ~= 0 then
    local day, month = ledger_dates()
    local amount = string.format('%d', charge)
    for _, field in ipairs({'charged', 'd:' .. day, 'm:' .. month, 'p:' .. provider,
                            'pd:' .. day .. ':' .. provider}) do
      redis.call('HINCRBY', ledger, field, amount)
    end
    redis.call('HINCRBY', totals, 'charged', amount)
  end
end
