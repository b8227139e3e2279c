"""The durable schedule: when each unfinished job next needs attention.

Every unfinished job has exactly one entry, a member of one lane's sorted set (its score: when
it is next due, by Redis's clock). A job enters at enqueue, in the same script as its record;
its entry moves from lane to lane as its status changes and leaves only when nothing is left to
do for it (its webhook delivered or given up). Broker messages are disposable: a worker's pump
claims due entries (worker/pump.py), which pushes each entry's score forward by a lease, and
finishing the step writes the next due time. A claim that never finishes comes due again when
its lease runs out, whatever was lost: the worker, the message, the task's own exception.

Scripts here are the only writers of the lanes, the leases and the faults, which is what keeps
one entry per job: placing an entry in one lane removes it from every other.
"""

from __future__ import annotations

from typing import Any

import redis

from producer.core.names import LANES, Keys, Lane

# A parked entry's score is its due time plus this: due, but out of every claim's due range
# until its provider has room (worker/pump.py). Any placement or nudge takes it out.
PARKED_BAND_S = 1e10

# KEYS: every lane (LANES order), leases, faults. ARGV: member, lane index (1-based; 0 when
# the entry is done), delay_s, token, "1" to keep the member's fault count. With a token, only
# the claim that holds the entry may place it: a step that lost its lease (it ran past it and
# someone else claimed the entry) leaves the schedule to the newer claim, which reads the
# record and routes by it. A placement is a step that completed, which ends a run of faults
# (FAULT_MAX_ATTEMPTS counts them in a row), except the retry of a fault itself.
_PLACE = """
pcall(redis.replicate_commands)  -- Redis < 7 needs it for TIME before writes
local n = #KEYS - 2
local leases, faults = KEYS[n + 1], KEYS[n + 2]
local member, target, token = ARGV[1], tonumber(ARGV[2]), ARGV[4]
if token ~= '' and redis.call('HGET', leases, member) ~= token then return 0 end
local t = redis.call('TIME')
local due = tonumber(t[1]) + tonumber(t[2]) / 1000000 + tonumber(ARGV[3])
for i = 1, n do
  if i ~= target then redis.call('ZREM', KEYS[i], member) end
end
if target > 0 then
  redis.call('ZADD', KEYS[target], due, member)
end
if target == 0 or ARGV[5] ~= '1' then
  redis.call('HDEL', faults, member)
end
redis.call('HDEL', leases, member)
return 1
"""

# KEYS: every lane, leases. ARGV: member. Makes an unclaimed entry due now, wherever it is
# (a cancel: the step notices sooner). A claimed one is left alone: its step is running and
# will place it by the record, which already says cancelled.
_NUDGE = """
pcall(redis.replicate_commands)
local n = #KEYS - 1
if redis.call('HEXISTS', KEYS[n + 1], ARGV[1]) == 1 then return 0 end
local t = redis.call('TIME')
local now = tonumber(t[1]) + tonumber(t[2]) / 1000000
for i = 1, n do
  if redis.call('ZSCORE', KEYS[i], ARGV[1]) then
    redis.call('ZADD', KEYS[i], 'XX', now, ARGV[1])
    return 1
  end
end
return 0
"""

# A Lua fragment for the enqueue scripts: `local now` by Redis's clock.
REDIS_NOW = """
pcall(redis.replicate_commands)
local t = redis.call('TIME')
local now = tonumber(t[1]) + tonumber(t[2]) / 1000000
"""


class Schedule:
    """Places, moves and reads schedule entries.

    Args:
        client: the Redis holding job records.
        keys: the deployment's keys.
    """

    def __init__(self, client: redis.Redis, keys: Keys) -> None:
        self.redis = client
        self.keys = keys
        self._place = client.register_script(_PLACE)
        self._nudge = client.register_script(_NUDGE)
        self._place_keys = [*keys.schedules(), keys.leases(), keys.faults()]

    def place(
        self,
        member: str,
        lane: Lane | None,
        delay_s: float = 0.0,
        *,
        token: str = "",
        client: Any = None,
        keep_faults: bool = False,
    ) -> Any:
        """Make the entry due in delay_s seconds in lane (None: remove it, the job is done).

        Args:
            token: the claim's token; the placement is dropped if another claim holds it.
            client: a pipeline to queue the call on (it then runs in that transaction).
            keep_faults: the placement retries a fault: the member's fault count stands
                (any other placement resets it).
        """
        index = LANES.index(lane) + 1 if lane is not None else 0
        return self._place(
            keys=self._place_keys,
            args=[member, index, f"{max(0.0, delay_s):.3f}", token, "1" if keep_faults else ""],
            client=client or self.redis,
        )

    def nudge(self, member: str, client: Any = None) -> Any:
        """Make an unclaimed entry due now (after a cancel)."""
        return self._nudge(
            keys=[*self.keys.schedules(), self.keys.leases()],
            args=[member],
            client=client or self.redis,
        )

    def entry(self, member: str) -> tuple[Lane, float] | None:
        """(lane, due time) of the member's entry (a parked one's, unparked), or None if it
        has none."""
        with self.redis.pipeline(transaction=False) as pipe:
            for lane in LANES:
                pipe.zscore(self.keys.schedule(lane), member)
            scores = pipe.execute()
        for lane, score in zip(LANES, scores, strict=True):
            if score is not None:
                due = float(score)
                return lane, due - PARKED_BAND_S if due >= PARKED_BAND_S else due
        return None

    def total(self) -> int:
        """How many entries the schedule holds."""
        with self.redis.pipeline(transaction=False) as pipe:
            for key in self.keys.schedules():
                pipe.zcard(key)
            return sum(int(n) for n in pipe.execute())
